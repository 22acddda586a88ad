//! The `query` scenario: a data set loaded, then random services queried over pipelined raw
//! connections for a while.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use distro::model::Text;
use distro::wire::{Message, Opcode, Query, encode_frame};
use serde_json::{Map, Value, json};

use crate::conn::{CONVERGE_WAIT, NodeStatus, open_conns};
use crate::dataset::{load_data_set, service_names};
use crate::measure::{Counters, CpuMeter, Progress, new_histogram, round3, summary};
use crate::raw::{self, open_raw};

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

pub(crate) async fn query(
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
