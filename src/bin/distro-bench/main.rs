//! `distro-bench`: the load generator. Speaks the native protocol: the measured requests go
//! over raw pipelined connections ([`raw`]: frames encoded once or in place, answers checked by
//! header and the fields a scenario counts), so that the generator costs less than what it
//! measures; setup (loading data sets, reading the nodes' status) goes through the SDK
//! ([`distro::client::Conn`]).
//!
//! ```text
//! distro-bench [--servers ADDR,...] [--spawn N [--spawn-tokens] [--spawn-tls]] [--token T]
//!              [--tls-ca CA] <scenario> [options]
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
//! Likewise `--tls-ca` makes every connection speak TLS (verifying the nodes against that CA),
//! and `--spawn-tls` makes a CA and a certificate for the run and spawns nodes that serve TLS
//! on every port (mutual TLS between peers): the cost of TLS against plaintext (`"tls"`).
//!
//! Every scenario reports the CPU it and (with `--spawn`) the nodes used over its measured
//! phase: `generator_cpu_s`, `nodes_cpu_s` and `generator_cpu_share`, the generator's part of
//! the two. The generator shares the machine with the nodes; it should take at most a third.
//!
//! Layout: this file parses the command line and runs the scenario; each scenario has a file of
//! its own (`register.rs`, `query.rs`, `beat.rs`, `converge.rs`, `flood.rs`, `join.rs`), and
//! they share `raw.rs` (the measured connections), `conn.rs` (SDK connections, node status, the
//! token), `dataset.rs` (the bench instances, and loading them), `measure.rs` (histograms,
//! counters, the summary, CPU and memory) and `spawn.rs` (the `--spawn` cluster).

mod beat;
mod conn;
mod converge;
mod dataset;
mod flood;
mod join;
mod measure;
mod query;
mod raw;
mod register;
mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use distro::model::BATCH_INSTANCES_MAX;
use serde_json::{Map, Value, json};

use crate::beat::beat;
use crate::conn::TOKEN;
use crate::converge::{converge, converge_services};
use crate::join::join;
use crate::measure::{RssMonitor, cpu_seconds, proc_cpu_seconds, round3};
use crate::query::query;
use crate::register::register;
use crate::spawn::SpawnedCluster;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Speak TLS to the nodes, verifying them against this CA (PEM).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// With --spawn: the nodes serve TLS (and peers mutual TLS), with a CA and certificate
    /// made for the run; every connection speaks TLS.
    #[arg(long, global = true)]
    spawn_tls: bool,
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
    match (cli.spawn_tls, &cli.tls_ca) {
        (true, _) if cli.spawn.is_none() => bail!("--spawn-tls needs --spawn"),
        (true, Some(_)) => bail!("--spawn-tls makes its own CA: leave out --tls-ca"),
        (false, Some(ca)) => crate::conn::use_tls(ca)?,
        _ => {}
    }
    let tls_on = cli.spawn_tls || cli.tls_ca.is_some();
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
                cli.spawn_tls,
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
    out.insert("tls".into(), json!(tls_on));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
