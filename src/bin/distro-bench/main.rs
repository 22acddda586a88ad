//! `distro-bench`: the load generator. Speaks the native protocol: the measured requests go
//! over raw pipelined connections ([`raw`]: frames encoded once or in place, answers checked by
//! header and the fields a scenario counts), so that the generator costs less than what it
//! measures; setup (loading data sets, reading the nodes' status) goes through the SDK
//! ([`distro::client::Conn`]).
//!
//! ```text
//! distro-bench [--servers ADDR,...] [--spawn N [--spawn-tokens]] [--token T] <scenario> [options]
//!   register --instances N [--services M] [--connections C] [--pipeline P] [--batch B]
//!   query    --instances N [--services M] --duration-s S [--connections C] [--pipeline P]
//!   beat     --instances N --duration-s S [--connections C]
//!   converge --writes N [--rate R] [--services M | --service-size S] [--connections C]
//!   flood    --duration-s S [--probes P]
//! ```
//!
//! Latencies go into hdrhistograms in microseconds, measured from the *intended* send time: for
//! the rate-limited `converge` that is the schedule's slot, for the closed-loop scenarios the
//! moment the request was issued (a pipeline slot issues its next request as soon as the previous
//! answer is in, so no send is ever postponed behind a slow answer). Only requests the node
//! acknowledged count as ops; failures count as errors. A progress line goes to stderr about
//! once a second; the last line of stdout is one JSON object with the results.
//!
//! With `--token` (or `DISTRO_TOKEN`) every connection presents that token after Hello; with
//! `--spawn-tokens` the spawned nodes require tokens (a token file with one token that writes
//! every namespace, minted for the run) and every connection presents it — so that the cost of
//! token checks is measured against the same scenario without them (`"tokens"` in the JSON).
//!
//! Every scenario reports the CPU it and (with `--spawn`) the nodes used over its measured
//! phase: `generator_cpu_s`, `nodes_cpu_s` and `generator_cpu_share`, the generator's part of
//! the two. The generator shares the machine with the nodes; it should take at most a third.

mod flood;
mod raw;

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use distro::client::{Conn, PushSink};
use distro::model::{
    BATCH_INSTANCES_MAX, BEAT_KEYS_MAX, ClusterStatus, Instance, InstanceKey, InstanceView, Lease,
    ServiceName, Text,
};
use distro::wire::{Message, Opcode, Query, Register, encode_frame, encode_frame_into};
use hdrhistogram::Histogram;
use raw::RawConn;
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
/// (nothing heartbeats them outside the measured Beat frames) do not expire during a run.
const BENCH_LEASE: Lease = Lease {
    beat_ms: 3_600_000,
    unhealthy_ms: 3_600_000,
    expire_ms: 3_600_000,
};
/// How often a joining node is asked whether it serves yet (a new connection each time: the
/// node may not listen yet).
const JOIN_POLL: Duration = Duration::from_millis(10);
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
    /// Token every connection presents to the nodes (those with a token file require one).
    #[arg(long, env = "DISTRO_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// With --spawn: the nodes require tokens (a token file with one token for the run, which
    /// every connection presents).
    #[arg(long, global = true)]
    spawn_tokens: bool,
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
    /// Registers N instances, then renews them for S seconds over C connections, each sending
    /// its share's keys in Beat frames of up to 16,384 keys back to back, one in flight (as an
    /// SDK client's batched heartbeat round does).
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
        /// Services the writes are spread over, write k to service k mod M (each subscribed at
        /// every node) [default: 1000]
        #[arg(long, conflicts_with = "service_size")]
        services: Option<u64>,
        /// Instances per service once every write is in: the writes are spread over
        /// writes / S services (rounded up), each growing from 0 to S over the run.
        #[arg(long)]
        service_size: Option<u64>,
        /// Connections the writes go out on (all to the first node).
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Other clients' latency (P probe connections, one request at a time) for S seconds idle,
    /// then for S seconds under each kind of flood from one connection: pipelined requests
    /// never read, a subscriber of busy services that never reads, a slow reader of large
    /// answers (see `flood.rs`).
    Flood {
        #[arg(long)]
        duration_s: f64,
        #[arg(long, default_value_t = 4)]
        probes: u32,
    },
    /// With --spawn N (N >= 2): starts N - 1 nodes, loads N instances over M services into
    /// them, then starts node N and measures how long it takes to load the cluster's data
    /// (streamed from a peer) until it serves, holding every instance.
    Join {
        #[arg(long)]
        instances: u64,
        /// [default: instances / 10, at least 1]
        #[arg(long)]
        services: Option<u64>,
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

/// The token every connection presents, if any (set once, before the first connection).
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn client_token() -> Option<&'static str> {
    TOKEN.get().and_then(|t| t.as_deref())
}

async fn run(cli: Cli) -> anyhow::Result<Map<String, Value>> {
    validate(&cli.scenario)?;
    if cli.spawn_tokens && cli.spawn.is_none() {
        bail!("--spawn-tokens needs --spawn");
    }
    let token = match (cli.spawn_tokens, &cli.token) {
        (true, _) => Some(distro::auth::file::mint_token()),
        (false, t) => t.clone(),
    };
    let tokens_on = token.is_some();
    TOKEN.set(token).expect("set once");
    // The guard stops the spawned nodes whichever way this function is left.
    let joining = matches!(cli.scenario, Scenario::Join { .. });
    if joining && cli.spawn.is_none_or(|n| n < 2) {
        bail!("join needs --spawn N with N >= 2 (the last node joins)");
    }
    let mut cluster = match cli.spawn {
        Some(n) => Some(
            SpawnedCluster::start(
                n,
                joining as usize,
                cli.distrod.as_deref(),
                cli.spawn_tokens,
            )
            .await?,
        ),
        None => None,
    };
    let servers = match &cluster {
        Some(c) => c.started_addrs(),
        None => cli.servers.clone(),
    };
    if servers.is_empty() {
        bail!("no server address given");
    }
    let pids = cluster.as_ref().map(|c| c.pids()).unwrap_or_default();
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
            register(
                &servers,
                &pids,
                instances,
                services,
                connections,
                pipeline,
                batch,
            )
            .await?
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
                &pids,
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
            beat(
                &servers,
                &pids,
                instances,
                services,
                duration_s,
                connections,
            )
            .await?
        }
        Scenario::Converge {
            writes,
            rate,
            services,
            service_size,
            connections,
        } => {
            let services = converge_services(writes, services, service_size);
            converge(&servers, &pids, writes, rate, services, connections).await?
        }
        Scenario::Flood { duration_s, probes } => {
            flood::flood(&servers, probes, duration_s).await?
        }
        Scenario::Join {
            instances,
            services,
        } => {
            let services = services.unwrap_or((instances / 10).max(1));
            let c = cluster.as_mut().expect("join runs on a spawned cluster");
            join(c, instances, services).await?
        }
    };
    let nodes = cluster.as_ref().map_or(servers.len(), |c| c.children.len());
    out.insert("nodes".into(), json!(nodes));
    out.insert("tokens".into(), json!(tokens_on));
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
            service_size,
            connections,
        } => {
            positive("writes", *writes)?;
            positive("services", services.unwrap_or(1))?;
            positive("service-size", service_size.unwrap_or(1))?;
            positive("connections", *connections as u64)?;
            if *writes >= u32::MAX as u64 {
                // Write k goes out with request id k + 1.
                bail!("--writes must be below {}", u32::MAX);
            }
            if !(rate.is_finite() && *rate > 0.0) {
                bail!("--rate must be a positive number of writes per second");
            }
            let n = converge_services(*writes, *services, *service_size);
            if n as usize > SUBSCRIPTIONS_PER_CONNECTION_MAX {
                bail!(
                    "converge subscribes to {n} services at each node, more than the \
                     {SUBSCRIPTIONS_PER_CONNECTION_MAX} one connection may hold: give fewer \
                     --services or a larger --service-size"
                );
            }
        }
        Scenario::Flood { duration_s, probes } => {
            duration(*duration_s)?;
            positive("probes", *probes as u64)?;
        }
        Scenario::Join {
            instances,
            services,
        } => {
            positive("instances", *instances)?;
            positive("services", services.unwrap_or(1))?;
        }
    }
    Ok(())
}

/// The services `converge` spreads its writes over.
fn converge_services(writes: u64, services: Option<u64>, service_size: Option<u64>) -> u64 {
    match (services, service_size) {
        (Some(m), _) => m,
        (None, Some(size)) => writes.div_ceil(size.max(1)),
        (None, None) => 1_000,
    }
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

/// One SDK connection over TCP. Its tasks live until it is closed (or the bench exits).
async fn dial(
    addr: &str,
    name: &str,
    timeout: Duration,
    on_push: PushSink,
) -> Result<Arc<Conn>, distro::client::ClientError> {
    let tasks = tokio_util::task::TaskTracker::new();
    let owner = CancellationToken::new();
    let conn = Conn::open(
        &distro::net::Tcp,
        addr,
        name,
        timeout,
        on_push,
        &tasks,
        &owner,
    )
    .await?;
    if let Some(t) = client_token() {
        let auth = Message::Auth(distro::wire::Token::new(t));
        match conn.call(&auth, timeout).await? {
            Message::Ack(_) => {}
            Message::Error(e) => {
                conn.close();
                return Err(distro::client::ClientError::from_body(e));
            }
            other => {
                conn.close();
                return Err(distro::client::ClientError::Unexpected(format!(
                    "{:?} answering Auth",
                    other.opcode()
                )));
            }
        }
    }
    Ok(conn)
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

/// `n` raw connections, round-robin over `servers` (connection j to node j mod n).
async fn open_raw(servers: &[String], n: usize) -> anyhow::Result<Vec<RawConn>> {
    let mut conns = Vec::with_capacity(n);
    for j in 0..n {
        conns.push(RawConn::open(&servers[j % servers.len()], "distro-bench").await?);
    }
    Ok(conns)
}

/// `register`: frames of `batch` new instances each, drawn from one shared counter by every
/// connection; each answer must be Ack(instances in its frame).
struct RegisterWork {
    next: Arc<AtomicU64>,
    frames: u64,
    instances: u64,
    batch: u64,
    names: Arc<Vec<ServiceName>>,
    /// The instance count of the frame in flight in each slot.
    expected: Vec<u32>,
}

impl raw::Workload for RegisterWork {
    fn request(&mut self, out: &mut BytesMut, slot: usize, request_id: u32) -> bool {
        let f = self.next.fetch_add(1, Ordering::Relaxed);
        if f >= self.frames {
            return false;
        }
        let lo = f * self.batch;
        let hi = (lo + self.batch).min(self.instances);
        let msg = Message::Register(Register {
            session_bound: false,
            instances: (lo..hi).map(|i| bench_instance(i, &self.names)).collect(),
        });
        encode_frame_into(out, request_id, 0, &msg);
        self.expected[slot] = (hi - lo) as u32;
        true
    }

    fn answer(&mut self, slot: usize, opcode: u8, body: &[u8]) -> Result<u64, String> {
        match raw::ack_count(opcode, body) {
            Some(n) if n == self.expected[slot] => Ok(n as u64),
            _ => Err(raw::unexpected(opcode, body)),
        }
    }
}

async fn register(
    servers: &[String],
    pids: &[u32],
    instances: u64,
    services: u64,
    connections: usize,
    pipeline: usize,
    batch: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = Arc::new(service_names(services));
    let conns = open_raw(servers, connections).await?;
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
    let cpu = CpuMeter::start(pids);
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
    for conn in conns {
        let mut work = RegisterWork {
            next: next.clone(),
            frames,
            instances,
            batch: batch as u64,
            names: names.clone(),
            expected: vec![0; pipeline],
        };
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            raw::run_pipelined(conn, pipeline, None, &mut work, &counters).await
        }));
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
    // Until every node holds the data: the nodes' share includes the sync the load caused.
    cpu.report(&mut out);
    Ok(out)
}

/// `query`: a Query frame per service, encoded once; each request is a random service's.
struct QueryWork {
    frames: Arc<Vec<Bytes>>,
    rng: Rng,
    /// Instances in all answers, and answers with none.
    returned: u64,
    empty: u64,
}

impl raw::Workload for QueryWork {
    fn request(&mut self, out: &mut BytesMut, _slot: usize, request_id: u32) -> bool {
        let f = &self.frames[self.rng.below(self.frames.len() as u64) as usize];
        raw::put_frame(out, f, request_id);
        true
    }

    fn answer(&mut self, _slot: usize, opcode: u8, body: &[u8]) -> Result<u64, String> {
        if opcode != Opcode::QueryResult as u8 {
            return Err(raw::unexpected(opcode, body));
        }
        let n = raw::snapshot_instance_count(body).ok_or("malformed QueryResult")?;
        self.returned += n as u64;
        self.empty += (n == 0) as u64;
        Ok(1)
    }
}

async fn query(
    servers: &[String],
    pids: &[u32],
    instances: u64,
    services: u64,
    duration_s: f64,
    connections: usize,
    pipeline: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = Arc::new(service_names(services));
    let status = NodeStatus::open(servers).await?;
    let baseline: Vec<u64> = status.counts().await.into_iter().flatten().collect();
    let load_start = Instant::now();
    let loaded = {
        let conns = open_conns(servers, connections).await?;
        let loaded = load_data_set(&conns, instances, &names).await?;
        conns.iter().for_each(|c| c.close());
        loaded
    };
    let target: Vec<u64> = baseline.iter().map(|b| b + loaded).collect();
    let load_s = status
        .wait_hold(load_start, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the nodes did not all hold the data set in time")?;
    eprintln!("distro-bench: loaded {loaded} instances; every node holds them after {load_s:.2}s");
    let frames: Arc<Vec<Bytes>> = Arc::new(
        names
            .iter()
            .map(|name| {
                let q = Message::Query(Query {
                    name: name.clone(),
                    cluster: Text::default(),
                    healthy_only: false,
                });
                encode_frame(0, 0, &q)
            })
            .collect(),
    );
    let conns = open_raw(servers, connections).await?;

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("query", counters.clone(), Default::default());
    let cpu = CpuMeter::start(pids);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut tasks = Vec::new();
    for (j, conn) in conns.into_iter().enumerate() {
        let mut work = QueryWork {
            frames: frames.clone(),
            rng: Rng::new(j as u64 + 1),
            returned: 0,
            empty: 0,
        };
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            let hist = raw::run_pipelined(conn, pipeline, Some(deadline), &mut work, &counters);
            (hist.await, work.returned, work.empty)
        }));
    }
    let mut hist = new_histogram();
    let (mut returned, mut empty) = (0, 0);
    for t in tasks {
        let (h, r, e) = t.await.context("query task panicked")?;
        hist.add(h).expect("same bounds");
        returned += r;
        empty += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(progress);
    let mut out = summary("query", &counters, seconds, &hist);
    cpu.report(&mut out);
    out.insert("instances".into(), json!(instances));
    out.insert("services".into(), json!(services));
    out.insert("connections".into(), json!(connections));
    out.insert("pipeline".into(), json!(pipeline));
    out.insert("load_s".into(), json!(round3(load_s)));
    let ops = counters.ops().max(1);
    out.insert(
        "instances_per_result".into(),
        json!(round3(returned as f64 / ops as f64)),
    );
    out.insert("empty_results".into(), json!(empty));
    Ok(out)
}

/// `beat`: one connection's instances as Beat frames of at most [`BEAT_KEYS_MAX`] keys, encoded
/// once and sent in turn, one at a time (as the SDK's batched heartbeat round sends them).
struct BeatWork {
    /// Each frame and how many keys it carries.
    frames: Vec<(Bytes, u64)>,
    next: usize,
    /// The frame in flight in each slot.
    in_slot: Vec<usize>,
    /// Keys the node did not know (not renewed).
    unknown: u64,
}

impl raw::Workload for BeatWork {
    fn request(&mut self, out: &mut BytesMut, slot: usize, request_id: u32) -> bool {
        raw::put_frame(out, &self.frames[self.next].0, request_id);
        self.in_slot[slot] = self.next;
        self.next = (self.next + 1) % self.frames.len();
        true
    }

    fn answer(&mut self, slot: usize, opcode: u8, body: &[u8]) -> Result<u64, String> {
        let keys = self.frames[self.in_slot[slot]].1;
        let unknown = raw::beat_ack_unknown(opcode, body)
            .filter(|u| (*u as u64) <= keys)
            .ok_or_else(|| raw::unexpected(opcode, body))?;
        self.unknown += unknown as u64;
        Ok(keys - unknown as u64)
    }
}

async fn beat(
    servers: &[String],
    pids: &[u32],
    instances: u64,
    services: u64,
    duration_s: f64,
    connections: usize,
) -> anyhow::Result<Map<String, Value>> {
    let names = Arc::new(service_names(services));
    let status = NodeStatus::open(servers).await?;
    let baseline: Vec<u64> = status.counts().await.into_iter().flatten().collect();
    let load_start = Instant::now();
    {
        let conns = open_conns(servers, connections).await?;
        let loaded = load_data_set(&conns, instances, &names).await?;
        conns.iter().for_each(|c| c.close());
        if loaded != instances {
            bail!("only {loaded} of {instances} instances were registered");
        }
    }
    let target: Vec<u64> = baseline.iter().map(|b| b + instances).collect();
    let load_s = status
        .wait_hold(load_start, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the nodes did not all hold the data set in time")?;
    // Connection j renews instances j, j + C, j + 2C, … (as the SDK client j that would hold
    // them): its keys go to node j mod n, which renews those it owns and forwards the rest.
    let conns = open_raw(servers, connections).await?;
    let mut works = Vec::with_capacity(connections);
    for j in 0..connections {
        let keys: Vec<InstanceKey> = (j as u64..instances)
            .step_by(connections)
            .map(|i| bench_instance(i, &names).key)
            .collect();
        let frames: Vec<(Bytes, u64)> = keys
            .chunks(BEAT_KEYS_MAX)
            .map(|c| {
                (
                    encode_frame(0, 0, &Message::Beat(c.to_vec())),
                    c.len() as u64,
                )
            })
            .collect();
        if frames.is_empty() {
            bail!("--connections {connections} is more than --instances {instances}");
        }
        works.push(BeatWork {
            frames,
            next: 0,
            in_slot: vec![0],
            unknown: 0,
        });
    }
    eprintln!(
        "distro-bench: {instances} instances registered, renewed over {connections} connections; every node holds them after {load_s:.2}s"
    );

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("beat", counters.clone(), Default::default());
    let cpu = CpuMeter::start(pids);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut tasks = Vec::new();
    for (conn, mut work) in conns.into_iter().zip(works) {
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            let hist = raw::run_pipelined(conn, 1, Some(deadline), &mut work, &counters).await;
            (hist, work.unknown)
        }));
    }
    let mut hist = new_histogram();
    let mut unknown = 0;
    for t in tasks {
        let (h, u) = t.await.context("beat task panicked")?;
        hist.add(h).expect("same bounds");
        unknown += u;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(progress);
    let mut out = summary("beat", &counters, seconds, &hist);
    cpu.report(&mut out);
    out.insert("instances".into(), json!(instances));
    out.insert("connections".into(), json!(connections));
    out.insert("beat_frames".into(), json!(hist.len()));
    out.insert("unknown_keys".into(), json!(unknown));
    out.insert(
        "latency_per".into(),
        json!(format!("Beat frame (up to {BEAT_KEYS_MAX} keys)")),
    );
    out.insert("load_s".into(), json!(round3(load_s)));
    Ok(out)
}

/// Which nodes have pushed each write, the write → visible-everywhere latencies, and what the
/// pushes cost on the wire.
struct Visibility {
    start: Instant,
    interval_ns: f64,
    writes: u64,
    all: u8,
    seen: Vec<AtomicU8>,
    visible: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// Push frames the subscribers received since the clock started, and their bytes on the
    /// wire (length prefix and header included).
    push_frames: AtomicU64,
    push_bytes: AtomicU64,
    /// Of those, whole lists and deltas (what changed since the last push).
    full_pushes: AtomicU64,
    delta_pushes: AtomicU64,
    /// Writes seen by a subscriber for the first time, summed over the subscribers: the changes
    /// they observed.
    observed: AtomicU64,
}

impl Visibility {
    /// When write `k` was due on the schedule.
    fn intended(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// A push frame of `len` bytes from node `node` arrived now, showing `views` as they are:
    /// the whole list, or (`delta`) the instances changed since the last push.
    fn push(&self, node: usize, len: usize, views: &[InstanceView], delta: bool) {
        let now = Instant::now();
        let kind = if delta {
            &self.delta_pushes
        } else {
            &self.full_pushes
        };
        kind.fetch_add(1, Ordering::Relaxed);
        self.push_frames.fetch_add(1, Ordering::Relaxed);
        self.push_bytes.fetch_add(len as u64, Ordering::Relaxed);
        let bit = 1u8 << node;
        for v in views {
            let Some(k) = bench_index(&v.ip, v.port).filter(|k| *k < self.writes) else {
                continue;
            };
            let before = self.seen[k as usize].fetch_or(bit, Ordering::AcqRel);
            if before & bit != 0 {
                continue;
            }
            self.observed.fetch_add(1, Ordering::Relaxed);
            if before | bit == self.all {
                let lat = now.saturating_duration_since(self.intended(k));
                self.hist.lock().unwrap().saturating_record(micros(lat));
                self.visible.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How many Subscribe frames a subscriber writes at a time.
const SUBSCRIBE_CHUNK: usize = 256;

/// Subscribes `conn` (to node `node`) to every service, reports on `subscribed` once every
/// Subscribe is acknowledged, then hands each Push to the [`Visibility`] in `slot` (once one is
/// there) until the connection ends or the task is aborted.
async fn subscriber(
    conn: RawConn,
    node: usize,
    names: Arc<Vec<ServiceName>>,
    slot: Arc<Mutex<Option<Arc<Visibility>>>>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let (mut rd, mut wr) = conn.into_split();
    let addr = rd.addr.clone();
    // Written while the answers are read, so that neither side's buffers fill up and stop it.
    let write = async {
        for (c, chunk) in names.chunks(SUBSCRIBE_CHUNK).enumerate() {
            for (i, name) in chunk.iter().enumerate() {
                let id = (c * SUBSCRIBE_CHUNK + i + 1) as u32;
                encode_frame_into(wr.buf(), id, 0, &Message::Subscribe(name.clone()));
            }
            wr.flush().await?;
        }
        anyhow::Ok(wr)
    };
    let read = async {
        let mut acked = 0usize;
        let mut subscribed = Some(subscribed);
        let mut failed = None;
        rd.for_each_frame(|id, opcode, frame| {
            let body = raw::body(&frame);
            if id != 0 {
                if raw::ack_count(opcode, &body).is_none() {
                    failed = Some(format!("subscribe: {}", raw::unexpected(opcode, &body)));
                    return ControlFlow::Break(());
                }
                acked += 1;
                if acked == names.len()
                    && let Some(s) = subscribed.take()
                {
                    let _ = s.send(());
                }
                return ControlFlow::Continue(());
            }
            if opcode != Opcode::Push as u8 && opcode != Opcode::PushDelta as u8 {
                failed = Some(raw::unexpected(opcode, &body));
                return ControlFlow::Break(());
            }
            let vis = slot.lock().unwrap().clone();
            let Some(vis) = vis else {
                // The initial snapshots, before the clock starts.
                return ControlFlow::Continue(());
            };
            let op = Opcode::from_u8(opcode).expect("checked above");
            match Message::decode(op, body) {
                Ok(Message::Push(snap)) => {
                    vis.push(node, frame.len(), &snap.instances, false);
                    ControlFlow::Continue(())
                }
                Ok(Message::PushDelta(d)) => {
                    vis.push(node, frame.len(), &d.updated, true);
                    ControlFlow::Continue(())
                }
                Ok(_) => unreachable!("decoded as a push"),
                Err(e) => {
                    failed = Some(format!("malformed {op:?}: {e}"));
                    ControlFlow::Break(())
                }
            }
        })
        .await?;
        Err::<(), _>(anyhow::anyhow!(
            failed.unwrap_or_else(|| "the node closed the connection".into())
        ))
    };
    // The writer half is kept (not dropped) while reading: dropping it would shut the socket's
    // write side down, and the node would close the session.
    let (wr, read) = tokio::join!(write, read);
    let _wr = wr.with_context(|| format!("subscriber of {addr}"))?;
    read.with_context(|| format!("subscriber of {addr}"))
}

/// Sends writes `j`, `j + C`, `j + 2C`, … (C = `stride`) on `wr`, each at its slot of the
/// schedule (or at once if the slot has passed: the schedule never waits for answers), with
/// request id `k + 1` for write `k`. Returns how late the latest write went out.
async fn converge_writer(
    mut wr: raw::RawWriter,
    j: u64,
    stride: u64,
    vis: Arc<Visibility>,
    names: Arc<Vec<ServiceName>>,
) -> std::io::Result<Duration> {
    let mut late_max = Duration::ZERO;
    let mut k = j;
    while k < vis.writes {
        let due = vis.intended(k);
        let now = Instant::now();
        if due > now {
            wr.flush().await?;
            tokio::time::sleep_until(due.into()).await;
            continue;
        }
        late_max = late_max.max(now - due);
        let msg = Message::Register(Register {
            session_bound: false,
            instances: vec![bench_instance(k, &names)],
        });
        encode_frame_into(wr.buf(), (k + 1) as u32, 0, &msg);
        k += stride;
    }
    wr.flush().await?;
    Ok(late_max)
}

/// Reads the answers to `converge_writer`'s writes (`expected` of them): each must be Ack(1);
/// its latency runs from the write's slot on the schedule.
async fn converge_acks(
    mut rd: raw::RawReader,
    expected: u64,
    vis: Arc<Visibility>,
    counters: Arc<Counters>,
    hist: Arc<Mutex<Histogram<u64>>>,
) {
    let mut answered = 0;
    let read = rd.for_each_frame(|id, opcode, frame| {
        if id == 0 {
            // A connection-level error: the node closes the connection next.
            return ControlFlow::Continue(());
        }
        let body = raw::body(&frame);
        match raw::ack_count(opcode, &body) {
            Some(1) => {
                let lat = Instant::now().saturating_duration_since(vis.intended(id as u64 - 1));
                hist.lock().unwrap().saturating_record(micros(lat));
                counters.ops.fetch_add(1, Ordering::Relaxed);
            }
            _ => counters.error(raw::unexpected(opcode, &body)),
        }
        answered += 1;
        if answered == expected {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if let Err(e) = read.await {
        counters.error(format!("connection to {} lost: {e}", rd.addr));
    }
}

async fn converge(
    servers: &[String],
    pids: &[u32],
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
    let mut subscribers = tokio::task::JoinSet::new();
    for (node, addr) in servers.iter().enumerate() {
        let conn = RawConn::open(addr, "distro-bench").await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        subscribers.spawn(subscriber(conn, node, names.clone(), slot.clone(), tx));
        let subscribed = tokio::time::timeout(CONVERGE_WAIT, rx);
        if !matches!(subscribed.await, Ok(Ok(()))) {
            let why = match subscribers.try_join_next() {
                Some(Ok(Err(e))) => format!("{e:#}"),
                _ => "no answer".into(),
            };
            bail!("subscribing at {addr} failed: {why}");
        }
    }
    eprintln!(
        "distro-bench: subscribed to {services} services at each of {} nodes",
        servers.len()
    );
    let conns = open_raw(&servers[..1], connections).await?;
    // Let the initial (empty) snapshots drain before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = CpuMeter::start(pids);
    let start = Instant::now();
    let vis = Arc::new(Visibility {
        start,
        interval_ns: 1e9 / rate,
        writes,
        all: ((1u16 << servers.len()) - 1) as u8,
        seen: (0..writes).map(|_| AtomicU8::new(0)).collect(),
        visible: AtomicU64::new(0),
        hist: Mutex::new(new_histogram()),
        push_frames: AtomicU64::new(0),
        push_bytes: AtomicU64::new(0),
        full_pushes: AtomicU64::new(0),
        delta_pushes: AtomicU64::new(0),
        observed: AtomicU64::new(0),
    });
    *slot.lock().unwrap() = Some(vis.clone());

    let counters = Arc::new(Counters::default());
    let extra = Arc::new(Mutex::new(String::new()));
    let progress = Progress::start("converge", counters.clone(), extra.clone());
    let ack_hist = Arc::new(Mutex::new(new_histogram()));
    // Open loop: write k goes out at its slot whatever the answers to earlier writes do, so a
    // slow node cannot slow the schedule down (no coordinated omission). If the node stops
    // reading, the writes wait for TCP and the latency (from the slot) shows it.
    let mut writers = tokio::task::JoinSet::new();
    let mut readers = tokio::task::JoinSet::new();
    for (j, conn) in conns.into_iter().enumerate() {
        let (rd, wr) = conn.into_split();
        let (j, stride) = (j as u64, connections as u64);
        let expected = writes.saturating_sub(j).div_ceil(stride);
        if expected == 0 {
            // More connections than writes: this one has none to send.
            continue;
        }
        writers.spawn(converge_writer(wr, j, stride, vis.clone(), names.clone()));
        readers.spawn(converge_acks(
            rd,
            expected,
            vis.clone(),
            counters.clone(),
            ack_hist.clone(),
        ));
    }
    let mut late_max = Duration::ZERO;
    loop {
        *extra.lock().unwrap() =
            format!("visible everywhere {}", vis.visible.load(Ordering::Relaxed));
        let next = tokio::time::timeout(Duration::from_millis(250), writers.join_next());
        match next.await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(late)))) => late_max = late_max.max(late),
            Ok(Some(Ok(Err(e)))) => counters.error(format!("writing to {}: {e}", servers[0])),
            Ok(Some(Err(e))) => bail!("writer task failed: {e}"),
            Err(_) => {}
        }
    }
    // The answers to the last writes: a write unanswered by then is an error.
    let answers = async { while readers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answers).await;
    readers.abort_all();
    let unanswered = writes.saturating_sub(counters.ops() + counters.errors());
    for _ in 0..unanswered {
        counters.error(format!("no answer within {REQUEST_TIMEOUT:?}"));
    }
    let seconds = start.elapsed().as_secs_f64();
    // Every acknowledged write must become visible at every node; wait for the stragglers.
    let acked = counters.ops();
    let wait_until = Instant::now() + CONVERGE_WAIT;
    while vis.visible.load(Ordering::Relaxed) < acked && Instant::now() < wait_until {
        *extra.lock().unwrap() =
            format!("visible everywhere {}", vis.visible.load(Ordering::Relaxed));
        if let Some(Ok(Err(e))) = subscribers.try_join_next() {
            bail!("{e:#}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(progress);
    *slot.lock().unwrap() = None;
    subscribers.abort_all();
    let visible = vis.visible.load(Ordering::Relaxed);
    if visible < acked {
        eprintln!(
            "distro-bench: only {visible} of {acked} acknowledged writes became visible at every node within {CONVERGE_WAIT:?}"
        );
    }
    let ack_hist = ack_hist.lock().unwrap().clone();
    let mut out = summary("converge", &counters, seconds, &ack_hist);
    // Until every write was seen everywhere: the pushes' cost on both sides is in it.
    cpu.report(&mut out);
    out.insert("writes".into(), json!(writes));
    out.insert("rate".into(), json!(rate));
    out.insert("services".into(), json!(services));
    out.insert("service_size".into(), json!(writes.div_ceil(services)));
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
    let push_bytes = vis.push_bytes.load(Ordering::Relaxed);
    let observed = vis.observed.load(Ordering::Relaxed);
    out.insert(
        "push_frames".into(),
        json!(vis.push_frames.load(Ordering::Relaxed)),
    );
    out.insert("push_bytes".into(), json!(push_bytes));
    out.insert("changes_observed".into(), json!(observed));
    out.insert(
        "push_bytes_per_change".into(),
        if observed == 0 {
            Value::Null
        } else {
            json!((push_bytes as f64 / observed as f64).round())
        },
    );
    Ok(out)
}

/// Loads the data set into the running nodes, starts the last member, and times how long it
/// takes to load the cluster's data (a snapshot streamed from a peer) until it serves.
async fn join(
    c: &mut SpawnedCluster,
    instances: u64,
    services: u64,
) -> anyhow::Result<Map<String, Value>> {
    let servers = c.started_addrs();
    let names = Arc::new(service_names(services));
    let conns = open_conns(&servers, servers.len()).await?;
    let t = Instant::now();
    let loaded = load_data_set(&conns, instances, &names).await?;
    for conn in &conns {
        conn.close();
    }
    let status = NodeStatus::open(&servers).await?;
    let target = vec![loaded; servers.len()];
    status
        .wait_hold(t, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the running nodes never held the whole data set")?;
    let load_s = t.elapsed().as_secs_f64();
    eprintln!(
        "distro-bench: {loaded} instances on every node after {load_s:.2} s; starting the joiner"
    );

    let joiner = c.client_addrs[c.children.len()].clone();
    let started = Instant::now();
    c.start_next()?;
    let deadline = started + CONVERGE_WAIT;
    let (ready_s, holding) = loop {
        if let Ok(s) = node_status(&joiner).await
            && s.ready
        {
            break (started.elapsed().as_secs_f64(), s.instances);
        }
        if let Some(st) = c.children.last_mut().expect("just started").try_wait()? {
            bail!("the joining node exited ({st}) before it served");
        }
        if Instant::now() >= deadline {
            bail!("the joining node did not serve within {CONVERGE_WAIT:?}");
        }
        tokio::time::sleep(JOIN_POLL).await;
    };
    if holding < loaded {
        bail!("the joining node served holding {holding} of the {loaded} instances");
    }
    let mut out = Map::new();
    out.insert("scenario".into(), json!("join"));
    out.insert("instances".into(), json!(loaded));
    out.insert("services".into(), json!(services));
    out.insert("load_s".into(), json!(round3(load_s)));
    out.insert("join_ready_s".into(), json!(round3(ready_s)));
    out.insert("join_holding".into(), json!(holding));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// --spawn: a cluster of distrod processes

/// Spawned `distrod` processes; dropping it kills them (also on error or panic).
struct SpawnedCluster {
    exe: PathBuf,
    /// Client and peer addresses of every member, started or not.
    client_addrs: Vec<String>,
    peer_addrs: Vec<String>,
    token: String,
    /// The token file the nodes load (with `--spawn-tokens`).
    token_file: Option<PathBuf>,
    /// The started nodes, in member order (node i + 1 is `children[i]`).
    children: Vec<Child>,
    dir: PathBuf,
    logs: Vec<PathBuf>,
    /// Keep the nodes' logs (set unless the run succeeded).
    keep_logs: bool,
}

impl SpawnedCluster {
    /// A cluster of `n` members, of which all but the last `held_back` are started now (the
    /// others by [`SpawnedCluster::start_next`]); returns once the started ones serve.
    async fn start(
        n: usize,
        held_back: usize,
        distrod: Option<&Path>,
        with_tokens: bool,
    ) -> anyhow::Result<SpawnedCluster> {
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
        let token_file = match (with_tokens, client_token()) {
            (true, Some(client_token)) => {
                let path = dir.join("tokens.toml");
                let entry = distro::auth::file::token_entry(
                    "distro-bench",
                    client_token,
                    &[],
                    &["*".to_string()],
                )?;
                std::fs::write(&path, entry)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            _ => None,
        };
        let mut cluster = SpawnedCluster {
            exe,
            client_addrs,
            peer_addrs,
            token,
            token_file,
            children: Vec::new(),
            dir: dir.clone(),
            logs: Vec::new(),
            keep_logs: true,
        };
        for _ in held_back..n {
            cluster.start_next()?;
        }
        cluster.wait_ready().await?;
        eprintln!(
            "distro-bench: {} distrod node(s) ready at {} (logs in {})",
            cluster.children.len(),
            cluster.started_addrs().join(","),
            dir.display()
        );
        Ok(cluster)
    }

    /// Starts the next member that is not running yet.
    fn start_next(&mut self) -> anyhow::Result<()> {
        let i = self.children.len();
        let n = self.client_addrs.len();
        if i == n {
            bail!("every member is running already");
        }
        let log = self.dir.join(format!("node-{}.log", i + 1));
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--node-id", &(i + 1).to_string()])
            .args(["--listen", &self.client_addrs[i]])
            .args(["--peer-listen", &self.peer_addrs[i]])
            .args(["--log-level", "warn"])
            // Several nodes on one machine: the default admin port would collide.
            .args(["--http", "off"])
            .args(
                self.token_file
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--token-file"), p.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        if n > 1 {
            cmd.args(["--members", &self.peer_addrs.join(",")])
                // Through the environment, so the token does not show in process lists.
                .env("DISTRO_CLUSTER_TOKEN", &self.token);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.children.push(child);
        self.logs.push(log);
        Ok(())
    }

    /// Client addresses of the started nodes.
    fn started_addrs(&self) -> Vec<String> {
        self.client_addrs[..self.children.len()].to_vec()
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Until every started node answers ClusterStatus as ready, seeing every started member up.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SPAWN_READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        let started = self.children.len();
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
            for addr in self.started_addrs() {
                match node_status(&addr).await {
                    Ok(s) if s.ready && s.members.iter().filter(|m| m.up).count() >= started => {
                        ready += 1
                    }
                    Ok(_) => last = format!("{addr}: not ready or a member down"),
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            if ready == started {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the spawned cluster was not ready within {SPAWN_READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A node's view of the cluster, over a connection of its own.
async fn node_status(addr: &str) -> anyhow::Result<ClusterStatus> {
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
        Ok(Message::ClusterStatusResult(s)) => Ok(s),
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

/// The CPU this process (the generator) and the spawned nodes used over one measured phase.
///
/// A load generator sharing the machine with what it measures takes CPU from it: the share it
/// took is reported with every scenario (`generator_cpu_share`), so a figure can be judged by
/// how much of the machine the nodes really had. Kernel work (loopback TCP) is counted for the
/// process in whose system call or time slice it ran.
struct CpuMeter {
    pids: Vec<u32>,
    generator_before_s: f64,
    nodes_before_s: f64,
}

impl CpuMeter {
    /// Starts measuring; `pids` are the nodes' (empty when the nodes were not spawned here).
    fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            generator_before_s: proc_cpu_seconds("self"),
            nodes_before_s: cpu_seconds(pids),
        }
    }

    /// Adds `generator_cpu_s`, `nodes_cpu_s` and `generator_cpu_share` (of the two together) for
    /// the phase so far; the node figures are null when the nodes are not this run's children.
    fn report(&self, out: &mut Map<String, Value>) {
        let generator = proc_cpu_seconds("self") - self.generator_before_s;
        out.insert("generator_cpu_s".into(), json!(round3(generator)));
        if self.pids.is_empty() {
            out.insert("nodes_cpu_s".into(), Value::Null);
            out.insert("generator_cpu_share".into(), Value::Null);
            return;
        }
        let nodes = cpu_seconds(&self.pids) - self.nodes_before_s;
        out.insert("nodes_cpu_s".into(), json!(round3(nodes)));
        let share = generator / (generator + nodes).max(1e-9);
        out.insert("generator_cpu_share".into(), json!(round3(share)));
    }
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
    fn converge_service_size_sets_the_service_count() {
        assert_eq!(converge_services(100_000, None, None), 1_000);
        assert_eq!(converge_services(100_000, Some(250), None), 250);
        assert_eq!(converge_services(100_000, None, Some(10)), 10_000);
        assert_eq!(converge_services(100_000, None, Some(1_000)), 100);
        assert_eq!(converge_services(100_001, None, Some(1_000)), 101);
        let cli = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let parsed = cli(&[
            "distro-bench",
            "converge",
            "--writes",
            "9",
            "--service-size",
            "3",
        ]);
        assert!(matches!(
            parsed.unwrap().scenario,
            Scenario::Converge {
                services: None,
                service_size: Some(3),
                ..
            }
        ));
        let both = ["--services", "2", "--service-size", "3"];
        let args = [
            &["distro-bench", "converge", "--writes", "9"][..],
            &both[..],
        ]
        .concat();
        assert!(
            cli(&args).is_err(),
            "--services and --service-size conflict"
        );
        let too_many = cli(&[
            "distro-bench",
            "converge",
            "--writes",
            "100000",
            "--service-size",
            "5",
        ]);
        assert!(validate(&too_many.unwrap().scenario).is_err());
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tdistrod\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
