//! `distro-bench`: the load generator. Speaks the native protocol through the SDK
//! ([`distro::client::Conn`] for raw pipelined load, [`distro::client::Client`] where the SDK's
//! own behaviour is what is measured, e.g. batched heartbeats).
//!
//! ```text
//! distro-bench [--servers ADDR,...] [--spawn N] <scenario> [options]
//!   register --instances N [--services M] [--connections C] [--pipeline P] [--batch B]
//!   query    --instances N [--services M] --duration-s S [--connections C] [--pipeline P]
//!   beat     --instances N --duration-s S [--connections C]
//!   converge --writes N [--rate R]
//! ```
//!
//! Latencies go into hdrhistograms in microseconds, measured from the *intended* send time: for
//! the rate-limited `converge` that is the schedule's slot, for the closed-loop scenarios the
//! moment the request was issued (a pipeline slot issues its next request as soon as the previous
//! answer is in, so no send is ever postponed behind a slow answer). Only requests the node
//! acknowledged count as ops; failures count as errors. A progress line goes to stderr about
//! once a second; the last line of stdout is one JSON object with the results.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use distro::client::{Client, ClientConfig, Conn, PushSink, Pushed};
use distro::model::{
    BATCH_INSTANCES_MAX, BEAT_KEYS_MAX, Instance, InstanceKey, InstanceView, Lease, ServiceName,
    Text,
};
use distro::wire::{Message, Query, Register};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deadline of one request. Generous: under overload we want slow answers counted as latency,
/// not as errors.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a spawned cluster may take to become ready.
const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the load we wait for every node to hold the data (or see every write).
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
/// Largest latency the histograms hold, µs (an hour: nothing is clipped in practice).
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Significant figures the histograms keep: a percentile is exact to within 1%. (Three made
/// each histogram ~270 KB; with one per pipelined worker, recording a latency was a cache miss
/// that cost the generator ~13% of its CPU.)
const LATENCY_SIGFIG: u8 = 2;
/// The lease of every bench instance. Long, so that instances registered without heartbeats
/// (the raw load) do not expire during a run, and so that the SDK clients of `beat` do not
/// heartbeat by themselves: only the measured `beat_now` calls renew.
const BENCH_LEASE: Lease = Lease {
    beat_ms: 3_600_000,
    unhealthy_ms: 3_600_000,
    expire_ms: 3_600_000,
};
/// How often the nodes' instance counts are read while waiting for them to hold the data.
/// ClusterStatus sums the per-owner digests (O(shards × buckets)): cheap, but not free.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// Instances per Register frame while loading the data set of `query` and `beat`.
const LOAD_BATCH: usize = 1024;
/// Subscriptions one connection may hold on a node (`SUBSCRIPTIONS_PER_CONNECTION_MAX`).
const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;

#[derive(Parser, Debug)]
#[command(
    name = "distro-bench",
    version,
    about = "Load generator for a Distro cluster",
    after_help = "The last line of stdout is one JSON object with the results."
)]
struct Cli {
    /// Client addresses of the nodes, comma-separated (ignored with --spawn).
    #[arg(
        long,
        default_value = "127.0.0.1:8858",
        value_delimiter = ',',
        global = true
    )]
    servers: Vec<String>,
    /// Start this many `distrod` processes on free loopback ports as a cluster for the run, and
    /// stop them afterwards.
    #[arg(long, global = true)]
    spawn: Option<usize>,
    /// The `distrod` binary for --spawn [default: next to this executable].
    #[arg(long, global = true)]
    distrod: Option<PathBuf>,
    /// With --spawn: after the scenario, leave the nodes idle this long and report their RSS
    /// then (`node_rss_bytes_settled`): what a node holds once the burst's buffers and the
    /// allocator's freed pages are given back.
    #[arg(long, global = true, default_value_t = 0.0)]
    settle_s: f64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// N distinct instances over M services from C connections, P requests in flight on each,
    /// B instances per Register frame.
    Register {
        #[arg(long)]
        instances: u64,
        /// [default: instances / 10, at least 1]
        #[arg(long)]
        services: Option<u64>,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// Loads N instances over M services, then queries services at random for S seconds.
    Query {
        #[arg(long)]
        instances: u64,
        /// [default: instances / 10, at least 1]
        #[arg(long)]
        services: Option<u64>,
        #[arg(long)]
        duration_s: f64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
    },
    /// Registers N instances over C SDK clients, then renews them with batched heartbeats
    /// (`Client::beat_now`, back to back) for S seconds.
    Beat {
        #[arg(long)]
        instances: u64,
        /// [default: instances / 10, at least 1]
        #[arg(long)]
        services: Option<u64>,
        #[arg(long)]
        duration_s: f64,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// Subscribes to every service at every node, registers N instances (one per frame) at the
    /// first node at R writes/s, and measures write → visible at every node.
    Converge {
        #[arg(long)]
        writes: u64,
        #[arg(long, default_value_t = 5_000.0)]
        rate: f64,
        /// Services the writes are spread over (each subscribed at every node).
        #[arg(long, default_value_t = 1_000)]
        services: u64,
        /// Connections the writes go out on (all to the first node).
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::Error::from(e)),
    };
    match rt.block_on(run(cli)) {
        Ok(summary) => println!("{}", Value::Object(summary)),
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ! {
    let msg = format!("{e:#}").replace('\n', " ");
    eprintln!("distro-bench: error: {msg}");
    std::process::exit(1);
}

async fn run(cli: Cli) -> anyhow::Result<Map<String, Value>> {
    validate(&cli.scenario)?;
    // The guard stops the spawned nodes whichever way this function is left.
    let cluster = match cli.spawn {
        Some(n) => Some(SpawnedCluster::start(n, cli.distrod.as_deref()).await?),
        None => None,
    };
    let servers = match &cluster {
        Some(c) => c.client_addrs.clone(),
        None => cli.servers.clone(),
    };
    if servers.is_empty() {
        bail!("no server address given");
    }
    let rss = cluster.as_ref().map(|c| RssMonitor::start(c.pids()));
    let cpu_before = cluster.as_ref().map(|c| cpu_seconds(&c.pids()));
    let self_cpu_before = proc_cpu_seconds("self");
    let mut out = match cli.scenario.clone() {
        Scenario::Register {
            instances,
            services,
            connections,
            pipeline,
            batch,
        } => {
            let services = services.unwrap_or((instances / 10).max(1));
            register(&servers, instances, services, connections, pipeline, batch).await?
        }
        Scenario::Query {
            instances,
            services,
            duration_s,
            connections,
            pipeline,
        } => {
            let services = services.unwrap_or((instances / 10).max(1));
            query(
                &servers,
                instances,
                services,
                duration_s,
                connections,
                pipeline,
            )
            .await?
        }
        Scenario::Beat {
            instances,
            services,
            duration_s,
            connections,
        } => {
            let services = services.unwrap_or((instances / 10).max(1));
            beat(&servers, instances, services, duration_s, connections).await?
        }
        Scenario::Converge {
            writes,
            rate,
            services,
            connections,
        } => converge(&servers, writes, rate, services, connections).await?,
    };
    out.insert("nodes".into(), json!(servers.len()));
    if let Some(c) = &cluster {
        if !(0.0..=3600.0).contains(&cli.settle_s) {
            bail!("--settle-s must be 0..=3600 seconds");
        }
        if cli.settle_s > 0.0 {
            eprintln!(
                "distro-bench: leaving the nodes idle for {} s",
                cli.settle_s
            );
            tokio::time::sleep(Duration::from_secs_f64(cli.settle_s)).await;
        }
        // The monitor samples once more when told to stop, so `last` is the RSS now.
        let rss = rss.expect("monitor runs with --spawn").stop();
        out.insert("node_rss_bytes_max".into(), json!(rss.peak_max));
        out.insert("node_rss_bytes_end".into(), json!(rss.last));
        if cli.settle_s > 0.0 {
            out.insert("node_rss_bytes_settled".into(), json!(rss.last));
        }
        let after = cpu_seconds(&c.pids());
        if let Some(before) = cpu_before {
            out.insert("node_cpu_s".into(), json!(round3(after - before)));
        }
    }
    out.insert(
        "bench_cpu_s".into(),
        json!(round3(proc_cpu_seconds("self") - self_cpu_before)),
    );
    if let Some(mut c) = cluster {
        c.keep_logs = false;
    }
    Ok(out)
}

fn validate(s: &Scenario) -> anyhow::Result<()> {
    let positive = |what: &str, v: u64| {
        if v == 0 {
            bail!("--{what} must be at least 1");
        }
        Ok(())
    };
    let duration = |d: f64| {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration-s must be a positive number of seconds");
        }
        Ok(())
    };
    match s {
        Scenario::Register {
            instances,
            services,
            connections,
            pipeline,
            batch,
        } => {
            positive("instances", *instances)?;
            positive("services", services.unwrap_or(1))?;
            positive("connections", *connections as u64)?;
            positive("pipeline", *pipeline as u64)?;
            positive("batch", *batch as u64)?;
            if *batch > BATCH_INSTANCES_MAX {
                bail!("--batch must be at most {BATCH_INSTANCES_MAX} (the frame limit)");
            }
        }
        Scenario::Query {
            instances,
            services,
            duration_s,
            connections,
            pipeline,
        } => {
            positive("instances", *instances)?;
            positive("services", services.unwrap_or(1))?;
            duration(*duration_s)?;
            positive("connections", *connections as u64)?;
            positive("pipeline", *pipeline as u64)?;
        }
        Scenario::Beat {
            instances,
            services,
            duration_s,
            connections,
        } => {
            positive("instances", *instances)?;
            positive("services", services.unwrap_or(1))?;
            duration(*duration_s)?;
            positive("connections", *connections as u64)?;
        }
        Scenario::Converge {
            writes,
            rate,
            services,
            connections,
        } => {
            positive("writes", *writes)?;
            positive("services", *services)?;
            positive("connections", *connections as u64)?;
            if !(rate.is_finite() && *rate > 0.0) {
                bail!("--rate must be a positive number of writes per second");
            }
            if *services as usize > SUBSCRIPTIONS_PER_CONNECTION_MAX {
                bail!("--services must be at most {SUBSCRIPTIONS_PER_CONNECTION_MAX}");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The data set

/// Instance `i` of the data set: service `i % services`, ip `10.a.b.c` from the low 24 bits of
/// `i`, port 8080 plus the rest. Every node computes nothing from these: they are only data.
fn bench_instance(i: u64, names: &[ServiceName]) -> Instance {
    let key = InstanceKey {
        service: names[(i % names.len() as u64) as usize].clone(),
        cluster: Text::from_static("DEFAULT"),
        ip: Text::from(format!(
            "10.{}.{}.{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )),
        port: 8080 + (i >> 24) as u16,
    };
    Instance {
        lease: BENCH_LEASE,
        ..Instance::new(key)
    }
}

/// The index of the bench instance at `ip:port`, the inverse of [`bench_instance`].
fn bench_index(ip: &str, port: u16) -> Option<u64> {
    let mut parts = ip.strip_prefix("10.")?.split('.');
    let mut i = 0u64;
    for _ in 0..3 {
        let b: u8 = parts.next()?.parse().ok()?;
        i = i << 8 | b as u64;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(i | (port.checked_sub(8080)? as u64) << 24)
}

fn service_names(n: u64) -> Vec<ServiceName> {
    (0..n)
        .map(|s| ServiceName::new("public", "DEFAULT_GROUP", &format!("bench-svc-{s:06}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Counters, histograms, progress

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// What the workers of one phase count, read by the progress line.
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            let e = e.to_string();
            eprintln!("distro-bench: request failed: {e}");
            *first = Some(e);
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Prints `[phase] elapsed, ops, rate over the last second, errors, extra` to stderr once a
/// second until dropped.
struct Progress {
    stop: CancellationToken,
}

impl Progress {
    fn start(phase: &'static str, counters: Arc<Counters>, extra: Arc<Mutex<String>>) -> Progress {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let ops = counters.ops();
                let extra = extra.lock().unwrap().clone();
                eprintln!(
                    "[{phase} {:6.1}s] ops {ops} ({}/s), errors {}{}{extra}",
                    start.elapsed().as_secs_f64(),
                    ops - last,
                    counters.errors(),
                    if extra.is_empty() { "" } else { ", " },
                );
                last = ops;
            }
        });
        Progress { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The fields every scenario reports.
fn summary(
    scenario: &str,
    counters: &Counters,
    seconds: f64,
    hist: &Histogram<u64>,
) -> Map<String, Value> {
    let ops = counters.ops();
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("ops".into(), json!(ops));
    m.insert("errors".into(), json!(counters.errors()));
    m.insert("seconds".into(), json!(round3(seconds)));
    m.insert(
        "ops_per_s".into(),
        json!((ops as f64 / seconds.max(1e-9)).round()),
    );
    insert_percentiles(&mut m, "", hist);
    if let Some(e) = counters.first_error.lock().unwrap().clone() {
        m.insert("first_error".into(), json!(e));
    }
    m
}

fn insert_percentiles(m: &mut Map<String, Value>, prefix: &str, hist: &Histogram<u64>) {
    let q = |q: f64| {
        if hist.is_empty() {
            Value::Null
        } else {
            json!(hist.value_at_quantile(q))
        }
    };
    m.insert(format!("{prefix}p50_us"), q(0.5));
    m.insert(format!("{prefix}p99_us"), q(0.99));
    m.insert(format!("{prefix}p999_us"), q(0.999));
    m.insert(
        format!("{prefix}max_us"),
        if hist.is_empty() {
            Value::Null
        } else {
            json!(hist.max())
        },
    );
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// xorshift64*: the workers' cheap random numbers (service picks).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ---------------------------------------------------------------------------------------------
// Connections and node status

fn no_push() -> PushSink {
    Arc::new(|_| {})
}

/// One SDK connection over TCP.
async fn dial(
    addr: &str,
    name: &str,
    timeout: Duration,
    on_push: PushSink,
) -> Result<Arc<Conn>, distro::client::ClientError> {
    Conn::open(&distro::net::Tcp, addr, name, timeout, on_push).await
}

/// `n` connections, round-robin over `servers`, each to a ready node.
async fn open_conns(servers: &[String], n: usize) -> anyhow::Result<Vec<Arc<Conn>>> {
    let mut conns = Vec::with_capacity(n);
    for j in 0..n {
        conns.push(open_ready(&servers[j % servers.len()], no_push()).await?);
    }
    Ok(conns)
}

async fn open_ready(addr: &str, on_push: PushSink) -> anyhow::Result<Arc<Conn>> {
    let c = dial(addr, "distro-bench", Duration::from_secs(5), on_push)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    if !c.hello.ready {
        c.close();
        bail!("node {addr} is not ready (still loading)");
    }
    Ok(c)
}

/// Sends one request; an Error frame is an error.
async fn call(conn: &Conn, msg: &Message) -> Result<Message, String> {
    match conn.call(msg, REQUEST_TIMEOUT).await {
        Ok(Message::Error(e)) => Err(format!(
            "server error ({}): {}",
            e.kind().map(|k| k.name()).unwrap_or("unknown code"),
            e.message
        )),
        Ok(m) => Ok(m),
        Err(e) => Err(e.to_string()),
    }
}

/// One status connection per node, to read how many instances each holds.
struct NodeStatus {
    conns: Vec<Arc<Conn>>,
}

impl NodeStatus {
    async fn open(servers: &[String]) -> anyhow::Result<NodeStatus> {
        let mut conns = Vec::new();
        for addr in servers {
            conns.push(
                dial(
                    addr,
                    "distro-bench-status",
                    Duration::from_secs(5),
                    no_push(),
                )
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
            );
        }
        Ok(NodeStatus { conns })
    }

    /// Live instances per node (`None` for a node that did not answer).
    async fn counts(&self) -> Vec<Option<u64>> {
        let mut out = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            out.push(match call(c, &Message::ClusterStatus).await {
                Ok(Message::ClusterStatusResult(s)) => Some(s.instances),
                _ => None,
            });
        }
        out
    }

    /// Polls until every node holds at least `target[i]` instances; the time from `start`
    /// when that was first seen, or `None` after `give_up`.
    async fn wait_hold(
        &self,
        start: Instant,
        target: &[u64],
        give_up: Duration,
        extra: &Mutex<String>,
    ) -> Option<f64> {
        let deadline = Instant::now() + give_up;
        loop {
            let counts = self.counts().await;
            *extra.lock().unwrap() = format!("nodes hold {}", fmt_counts(&counts));
            if counts
                .iter()
                .zip(target)
                .all(|(c, t)| c.is_some_and(|c| c >= *t))
            {
                return Some(start.elapsed().as_secs_f64());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "distro-bench: nodes did not all reach {target:?} instances within {give_up:?}: {}",
                    fmt_counts(&counts)
                );
                return None;
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }
}

fn fmt_counts(counts: &[Option<u64>]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|c| c.map_or("?".to_string(), |c| c.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Registers the whole data set in frames of [`LOAD_BATCH`] over `conns` (unmeasured setup);
/// returns how many instances were acknowledged.
async fn load_data_set(
    conns: &[Arc<Conn>],
    instances: u64,
    names: &Arc<Vec<ServiceName>>,
) -> anyhow::Result<u64> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("load", counters.clone(), Default::default());
    let next = Arc::new(AtomicU64::new(0));
    let frames = instances.div_ceil(LOAD_BATCH as u64);
    let mut tasks = Vec::new();
    for conn in conns {
        for _ in 0..4 {
            let (conn, next, names, counters) =
                (conn.clone(), next.clone(), names.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let f = next.fetch_add(1, Ordering::Relaxed);
                    if f >= frames || conn.is_closed() {
                        return;
                    }
                    let lo = f * LOAD_BATCH as u64;
                    let hi = (lo + LOAD_BATCH as u64).min(instances);
                    let msg = Message::Register(Register {
                        session_bound: false,
                        instances: (lo..hi).map(|i| bench_instance(i, &names)).collect(),
                    });
                    match call(&conn, &msg).await {
                        Ok(Message::Ack(n)) if n as u64 == hi - lo => {
                            counters.ops.fetch_add(hi - lo, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            counters.error(format!("unexpected answer {:?}", other.opcode()))
                        }
                        Err(e) => counters.error(e),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.context("load task panicked")?;
    }
    if counters.errors() > 0 {
        bail!(
            "loading the data set failed: {} of {frames} frames failed (first: {})",
            counters.errors(),
            counters
                .first_error
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        );
    }
    Ok(counters.ops())
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn register(
    servers: &[String],
    instances: u64,
    services: u64,
    connections: usize,
    pipeline: usize,
    batch: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = Arc::new(service_names(services));
    let conns = open_conns(servers, connections).await?;
    let status = NodeStatus::open(servers).await?;
    let baseline: Vec<u64> = status.counts().await.into_iter().flatten().collect();
    if baseline.len() != servers.len() {
        bail!("a node did not answer ClusterStatus");
    }
    let counters = Arc::new(Counters::default());
    let extra = Arc::new(Mutex::new(String::new()));
    let progress = Progress::start("register", counters.clone(), extra.clone());
    let frames = instances.div_ceil(batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    // Watches the nodes while the load runs: the hold time may come before the last ack.
    let all_target: Vec<u64> = baseline.iter().map(|b| b + instances).collect();
    let load_done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (extra, load_done) = (extra.clone(), load_done.clone());
        tokio::spawn(async move {
            loop {
                let counts = status.counts().await;
                *extra.lock().unwrap() = format!("nodes hold {}", fmt_counts(&counts));
                if counts
                    .iter()
                    .zip(&all_target)
                    .all(|(c, t)| c.is_some_and(|c| c >= *t))
                {
                    return (status, Some(start.elapsed().as_secs_f64()));
                }
                if load_done.load(Ordering::Acquire) {
                    return (status, None);
                }
                tokio::time::sleep(STATUS_POLL).await;
            }
        })
    };

    let mut tasks = Vec::new();
    for conn in &conns {
        for _ in 0..pipeline {
            let (conn, next, names, counters) =
                (conn.clone(), next.clone(), names.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                loop {
                    let f = next.fetch_add(1, Ordering::Relaxed);
                    if f >= frames {
                        break;
                    }
                    let lo = f * batch as u64;
                    let hi = (lo + batch as u64).min(instances);
                    let msg = Message::Register(Register {
                        session_bound: false,
                        instances: (lo..hi).map(|i| bench_instance(i, &names)).collect(),
                    });
                    let sent = Instant::now();
                    match call(&conn, &msg).await {
                        Ok(Message::Ack(n)) if n as u64 == hi - lo => {
                            hist.saturating_record(micros(sent.elapsed()));
                            counters.ops.fetch_add(hi - lo, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            counters.error(format!("unexpected answer {:?}", other.opcode()))
                        }
                        Err(e) => counters.error(e),
                    }
                    if conn.is_closed() {
                        counters.error(format!("connection to {} lost", conn.addr));
                        break;
                    }
                }
                hist
            }));
        }
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(t.await.context("register task panicked")?)
            .expect("same bounds");
    }
    let seconds = start.elapsed().as_secs_f64();
    load_done.store(true, Ordering::Release);
    let (status, mut hold_s) = watcher.await.context("watcher panicked")?;
    if hold_s.is_none() {
        // Wait for the nodes to catch up with what was acknowledged (failed frames excluded).
        let ok = counters.ops();
        let target: Vec<u64> = baseline.iter().map(|b| b + ok).collect();
        hold_s = status
            .wait_hold(start, &target, CONVERGE_WAIT, &extra)
            .await;
    }
    drop(progress);
    let mut out = summary("register", &counters, seconds, &hist);
    out.insert("instances".into(), json!(instances));
    out.insert("services".into(), json!(services));
    out.insert("connections".into(), json!(connections));
    out.insert("pipeline".into(), json!(pipeline));
    out.insert("batch".into(), json!(batch));
    out.insert("frames".into(), json!(frames));
    out.insert("all_nodes_hold_s".into(), json!(hold_s.map(round3)));
    Ok(out)
}

async fn query(
    servers: &[String],
    instances: u64,
    services: u64,
    duration_s: f64,
    connections: usize,
    pipeline: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = Arc::new(service_names(services));
    let conns = open_conns(servers, connections).await?;
    let status = NodeStatus::open(servers).await?;
    let baseline: Vec<u64> = status.counts().await.into_iter().flatten().collect();
    let load_start = Instant::now();
    let loaded = load_data_set(&conns, instances, &names).await?;
    let target: Vec<u64> = baseline.iter().map(|b| b + loaded).collect();
    let load_s = status
        .wait_hold(load_start, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the nodes did not all hold the data set in time")?;
    eprintln!("distro-bench: loaded {loaded} instances; every node holds them after {load_s:.2}s");

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("query", counters.clone(), Default::default());
    let returned = Arc::new(AtomicU64::new(0));
    let empty = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut tasks = Vec::new();
    for (j, conn) in conns.iter().enumerate() {
        for p in 0..pipeline {
            let (conn, names, counters, returned, empty) = (
                conn.clone(),
                names.clone(),
                counters.clone(),
                returned.clone(),
                empty.clone(),
            );
            let mut rng = Rng::new((j * pipeline + p + 1) as u64);
            tasks.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                while Instant::now() < deadline {
                    let name = &names[rng.below(names.len() as u64) as usize];
                    let msg = Message::Query(Query {
                        name: name.clone(),
                        cluster: Text::default(),
                        healthy_only: false,
                    });
                    let sent = Instant::now();
                    match call(&conn, &msg).await {
                        Ok(Message::QueryResult(s)) => {
                            hist.saturating_record(micros(sent.elapsed()));
                            counters.ops.fetch_add(1, Ordering::Relaxed);
                            returned.fetch_add(s.instances.len() as u64, Ordering::Relaxed);
                            if s.instances.is_empty() {
                                empty.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(other) => {
                            counters.error(format!("unexpected answer {:?}", other.opcode()))
                        }
                        Err(e) => counters.error(e),
                    }
                    if conn.is_closed() {
                        counters.error(format!("connection to {} lost", conn.addr));
                        break;
                    }
                }
                hist
            }));
        }
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(t.await.context("query task panicked")?)
            .expect("same bounds");
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(progress);
    let mut out = summary("query", &counters, seconds, &hist);
    out.insert("instances".into(), json!(instances));
    out.insert("services".into(), json!(services));
    out.insert("connections".into(), json!(connections));
    out.insert("pipeline".into(), json!(pipeline));
    out.insert("load_s".into(), json!(round3(load_s)));
    let ops = counters.ops().max(1);
    out.insert(
        "instances_per_result".into(),
        json!(round3(returned.load(Ordering::Relaxed) as f64 / ops as f64)),
    );
    out.insert("empty_results".into(), json!(empty.load(Ordering::Relaxed)));
    Ok(out)
}

async fn beat(
    servers: &[String],
    instances: u64,
    services: u64,
    duration_s: f64,
    connections: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = service_names(services);
    let status = NodeStatus::open(servers).await?;
    let baseline: Vec<u64> = status.counts().await.into_iter().flatten().collect();
    // C SDK clients, each holding an equal share; client j starts at server j (failover order).
    let mut clients = Vec::with_capacity(connections);
    for j in 0..connections {
        let mut order = servers.to_vec();
        order.rotate_left(j % servers.len());
        let mut config = ClientConfig::new(order);
        config.beat_interval = Duration::from_millis(BENCH_LEASE.beat_ms as u64);
        config.session_bound = false;
        config.request_timeout = REQUEST_TIMEOUT;
        config.client_name = "distro-bench".into();
        clients.push(Client::connect(config).await.context("SDK client")?);
    }
    let load_start = Instant::now();
    {
        let counters = Arc::new(Counters::default());
        let _progress = Progress::start("load", counters.clone(), Default::default());
        let mut tasks = Vec::new();
        for (j, client) in clients.iter().enumerate() {
            let share: Vec<Instance> = (j as u64..instances)
                .step_by(connections)
                .map(|i| bench_instance(i, &names))
                .collect();
            let (client, counters) = (client.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                for chunk in share.chunks(LOAD_BATCH) {
                    client.register_with(chunk.to_vec(), false).await?;
                    counters
                        .ops
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await
                .context("load task panicked")?
                .context("loading the data set failed")?;
        }
    }
    let target: Vec<u64> = baseline.iter().map(|b| b + instances).collect();
    let load_s = status
        .wait_hold(load_start, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the nodes did not all hold the data set in time")?;
    eprintln!(
        "distro-bench: {instances} instances held by {connections} clients; every node holds them after {load_s:.2}s"
    );

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("beat", counters.clone(), Default::default());
    let frames = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut tasks = Vec::new();
    for client in &clients {
        let (client, counters, frames, unknown) = (
            client.clone(),
            counters.clone(),
            frames.clone(),
            unknown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let held = client.held_count() as u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.beat_now().await {
                    Ok(n) => {
                        hist.saturating_record(micros(sent.elapsed()));
                        // Keys the node did not know were registered again, not renewed.
                        counters
                            .ops
                            .fetch_add(held.saturating_sub(n as u64), Ordering::Relaxed);
                        unknown.fetch_add(n as u64, Ordering::Relaxed);
                        frames.fetch_add(held.div_ceil(BEAT_KEYS_MAX as u64), Ordering::Relaxed);
                    }
                    Err(e) => counters.error(e),
                }
            }
            hist
        }));
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(t.await.context("beat task panicked")?)
            .expect("same bounds");
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(progress);
    for c in &clients {
        c.close();
    }
    let mut out = summary("beat", &counters, seconds, &hist);
    out.insert("instances".into(), json!(instances));
    out.insert("connections".into(), json!(connections));
    out.insert("beat_frames".into(), json!(frames.load(Ordering::Relaxed)));
    out.insert(
        "unknown_keys".into(),
        json!(unknown.load(Ordering::Relaxed)),
    );
    out.insert("latency_per".into(), json!("beat_now call (all held keys)"));
    out.insert("load_s".into(), json!(round3(load_s)));
    Ok(out)
}

/// Which nodes have pushed each write, and the write → visible-everywhere latencies.
struct Visibility {
    start: Instant,
    interval_ns: f64,
    writes: u64,
    all: u8,
    seen: Vec<AtomicU8>,
    visible: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// Pushes received: whole lists, and deltas (what changed since the last push).
    full_pushes: AtomicU64,
    delta_pushes: AtomicU64,
}

impl Visibility {
    /// A push from node `node` arrived now: the whole list, or the instances changed since the
    /// last push.
    fn push(&self, node: usize, push: &Pushed) {
        let (views, counter): (&[InstanceView], _) = match push {
            Pushed::Full(s) => (&s.instances, &self.full_pushes),
            Pushed::Delta(d) => (&d.updated, &self.delta_pushes),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let bit = 1u8 << node;
        for v in views {
            let Some(k) = bench_index(&v.ip, v.port).filter(|k| *k < self.writes) else {
                continue;
            };
            let before = self.seen[k as usize].fetch_or(bit, Ordering::AcqRel);
            if before & bit == 0 && before | bit == self.all {
                let intended =
                    self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64);
                let lat = now.saturating_duration_since(intended);
                self.hist.lock().unwrap().saturating_record(micros(lat));
                self.visible.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn converge(
    servers: &[String],
    writes: u64,
    rate: f64,
    services: u64,
    connections: usize,
) -> anyhow::Result<Map<String, Value>> {
    if servers.len() > 8 {
        bail!("converge tracks at most 8 nodes");
    }
    let names = Arc::new(service_names(services));
    // The subscribers see `vis` through a slot filled in once the schedule's start is known.
    let slot: Arc<Mutex<Option<Arc<Visibility>>>> = Arc::default();
    let mut subscribers = Vec::new();
    for (node, addr) in servers.iter().enumerate() {
        let slot = slot.clone();
        let on_push: PushSink = Arc::new(move |push| {
            let v = slot.lock().unwrap().clone();
            if let Some(v) = v {
                v.push(node, &push);
            }
        });
        let conn = open_ready(addr, on_push).await?;
        let msgs: Vec<Message> = names
            .iter()
            .map(|n| Message::Subscribe(n.clone()))
            .collect();
        let subs = msgs.iter().map(|m| call(&conn, m));
        for r in futures_util::future::join_all(subs).await {
            match r {
                Ok(Message::Ack(_)) => {}
                Ok(other) => bail!(
                    "subscribe at {addr}: unexpected answer {:?}",
                    other.opcode()
                ),
                Err(e) => bail!("subscribe at {addr}: {e}"),
            }
        }
        subscribers.push(conn);
    }
    eprintln!(
        "distro-bench: subscribed to {services} services at each of {} nodes",
        servers.len()
    );
    let conns = open_conns(&servers[..1], connections).await?;
    // Let the initial (empty) snapshots drain before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let vis = Arc::new(Visibility {
        start,
        interval_ns: 1e9 / rate,
        writes,
        all: ((1u16 << servers.len()) - 1) as u8,
        seen: (0..writes).map(|_| AtomicU8::new(0)).collect(),
        visible: AtomicU64::new(0),
        hist: Mutex::new(new_histogram()),
        full_pushes: AtomicU64::new(0),
        delta_pushes: AtomicU64::new(0),
    });
    *slot.lock().unwrap() = Some(vis.clone());

    let counters = Arc::new(Counters::default());
    let extra = Arc::new(Mutex::new(String::new()));
    let progress = Progress::start("converge", counters.clone(), extra.clone());
    let ack_hist = Arc::new(Mutex::new(new_histogram()));
    // Open loop: write k goes out at its slot whatever the answers to earlier writes do, so a
    // slow node cannot slow the schedule down (no coordinated omission). In-flight writes are
    // bounded; if the bound is hit the schedule slips, and the latency (from the slot) shows it.
    let inflight = Arc::new(tokio::sync::Semaphore::new(65_536));
    let mut late_max = Duration::ZERO;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..writes {
        let intended = start + Duration::from_nanos((k as f64 * vis.interval_ns) as u64);
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        } else {
            late_max = late_max.max(now - intended);
        }
        let permit = inflight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let conn = conns[(k % connections as u64) as usize].clone();
        let msg = Message::Register(Register {
            session_bound: false,
            instances: vec![bench_instance(k, &names)],
        });
        let (counters, ack_hist) = (counters.clone(), ack_hist.clone());
        tasks.spawn(async move {
            match call(&conn, &msg).await {
                Ok(Message::Ack(1)) => {
                    let lat = Instant::now().saturating_duration_since(intended);
                    ack_hist.lock().unwrap().saturating_record(micros(lat));
                    counters.ops.fetch_add(1, Ordering::Relaxed);
                }
                Ok(other) => counters.error(format!("unexpected answer {:?}", other.opcode())),
                Err(e) => counters.error(e),
            }
            drop(permit);
        });
        if k % 1024 == 0 {
            *extra.lock().unwrap() =
                format!("visible everywhere {}", vis.visible.load(Ordering::Relaxed));
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    // Every acknowledged write must become visible at every node; wait for the stragglers.
    let acked = counters.ops();
    let wait_until = Instant::now() + CONVERGE_WAIT;
    while vis.visible.load(Ordering::Relaxed) < acked && Instant::now() < wait_until {
        *extra.lock().unwrap() =
            format!("visible everywhere {}", vis.visible.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(progress);
    *slot.lock().unwrap() = None;
    for c in subscribers.iter().chain(&conns) {
        c.close();
    }
    let visible = vis.visible.load(Ordering::Relaxed);
    if visible < acked {
        eprintln!(
            "distro-bench: only {visible} of {acked} acknowledged writes became visible at every node within {CONVERGE_WAIT:?}"
        );
    }
    let ack_hist = ack_hist.lock().unwrap().clone();
    let mut out = summary("converge", &counters, seconds, &ack_hist);
    out.insert("writes".into(), json!(writes));
    out.insert("rate".into(), json!(rate));
    out.insert("services".into(), json!(services));
    out.insert("connections".into(), json!(connections));
    out.insert("visible".into(), json!(visible));
    out.insert(
        "full_pushes".into(),
        json!(vis.full_pushes.load(Ordering::Relaxed)),
    );
    out.insert(
        "delta_pushes".into(),
        json!(vis.delta_pushes.load(Ordering::Relaxed)),
    );
    insert_percentiles(&mut out, "visible_", &vis.hist.lock().unwrap());
    out.insert(
        "schedule_late_max_us".into(),
        json!(late_max.as_micros() as u64),
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// --spawn: a cluster of distrod processes

/// Spawned `distrod` processes; dropping it kills them (also on error or panic).
struct SpawnedCluster {
    children: Vec<Child>,
    client_addrs: Vec<String>,
    dir: PathBuf,
    logs: Vec<PathBuf>,
    /// Keep the nodes' logs (set unless the run succeeded).
    keep_logs: bool,
}

impl SpawnedCluster {
    async fn start(n: usize, distrod: Option<&Path>) -> anyhow::Result<SpawnedCluster> {
        if n == 0 || n > 8 {
            bail!("--spawn must be 1..=8");
        }
        let exe = match distrod {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot locate this executable")?
                .with_file_name("distrod"),
        };
        if !exe.is_file() {
            bail!(
                "{} not found; build it (cargo build --release --bins) or pass --distrod",
                exe.display()
            );
        }
        // Free ports: bind port 0, note the port, release it just before the nodes bind it.
        let mut ports = Vec::with_capacity(2 * n);
        {
            let mut held = Vec::new();
            for _ in 0..2 * n {
                let l =
                    std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
                ports.push(l.local_addr()?.port());
                held.push(l);
            }
        }
        let client_addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let peer_addrs: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[n + i]))
            .collect();
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("distro-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = SpawnedCluster {
            children: Vec::new(),
            client_addrs: client_addrs.clone(),
            dir: dir.clone(),
            logs: Vec::new(),
            keep_logs: true,
        };
        for i in 0..n {
            let log = dir.join(format!("node-{}.log", i + 1));
            let mut cmd = Command::new(&exe);
            cmd.args(["--node-id", &(i + 1).to_string()])
                .args(["--listen", &client_addrs[i]])
                .args(["--peer-listen", &peer_addrs[i]])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
            if n > 1 {
                cmd.args(["--members", &peer_addrs.join(",")])
                    // Through the environment, so the token does not show in process lists.
                    .env("DISTRO_CLUSTER_TOKEN", &token);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            cluster.children.push(child);
            cluster.logs.push(log);
        }
        cluster.wait_ready().await?;
        eprintln!(
            "distro-bench: {n} distrod node(s) ready at {} (logs in {})",
            client_addrs.join(","),
            dir.display()
        );
        Ok(cluster)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Until every node answers ClusterStatus as ready with every member up.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SPAWN_READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(st) = child.try_wait()? {
                    let tail = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                    bail!(
                        "distrod node {} exited ({st}) during startup: {}",
                        i + 1,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    );
                }
            }
            let mut ready = 0;
            for addr in &self.client_addrs {
                match node_ready(addr).await {
                    Ok(true) => ready += 1,
                    Ok(false) => last = format!("{addr}: not ready or a member down"),
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            if ready == self.client_addrs.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the spawned cluster was not ready within {SPAWN_READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Ready, and every member up in its view.
async fn node_ready(addr: &str) -> anyhow::Result<bool> {
    let c = dial(
        addr,
        "distro-bench-probe",
        Duration::from_secs(1),
        no_push(),
    )
    .await?;
    let r = call(&c, &Message::ClusterStatus).await;
    c.close();
    match r {
        Ok(Message::ClusterStatusResult(s)) => Ok(s.ready && s.members.iter().all(|m| m.up)),
        Ok(other) => bail!("unexpected answer {:?}", other.opcode()),
        Err(e) => bail!("{e}"),
    }
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        if self.keep_logs {
            eprintln!("distro-bench: node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc: memory and CPU of the nodes

/// Samples the nodes' resident memory (VmRSS, and the kernel's own peak VmHWM) four times a
/// second on a thread of its own, so a busy runtime cannot skip samples.
struct RssMonitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<RssReport>,
}

#[derive(Default)]
struct RssReport {
    /// Largest peak RSS of any node, bytes.
    peak_max: u64,
    /// Largest RSS of any node at the last sample, bytes.
    last: u64,
}

impl RssMonitor {
    fn start(pids: Vec<u32>) -> RssMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = RssReport::default();
            loop {
                let mut last = 0;
                for pid in &pids {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let rss = status_kib(&status, "VmRSS:") * 1024;
                    let hwm = status_kib(&status, "VmHWM:") * 1024;
                    report.peak_max = report.peak_max.max(rss).max(hwm);
                    last = last.max(rss);
                }
                report.last = last;
                if flag.load(Ordering::Acquire) {
                    return report;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        RssMonitor { stop, thread }
    }

    fn stop(self) -> RssReport {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc/<pid>/stat.
fn proc_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| proc_cpu_seconds(&p.to_string())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_index_inverts_bench_instance() {
        let names = service_names(7);
        for i in [0u64, 1, 255, 256, 65_535, 1 << 20, (1 << 24) + 5, 3 << 24] {
            let inst = bench_instance(i, &names);
            assert_eq!(bench_index(&inst.key.ip, inst.key.port), Some(i));
            assert_eq!(inst.key.service, names[(i % 7) as usize]);
        }
        assert_eq!(bench_index("192.168.0.1", 8080), None);
        assert_eq!(bench_index("10.0.0.1.2", 8080), None);
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tdistrod\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
