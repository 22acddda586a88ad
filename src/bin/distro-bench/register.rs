//! The `register` scenario: new instances registered over pipelined raw connections, timed
//! until every node holds them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::BytesMut;
use distro::model::ServiceName;
use distro::wire::{Message, Register, encode_frame_into};
use serde_json::{Map, Value, json};

use crate::conn::{CONVERGE_WAIT, NodeStatus, STATUS_POLL, fmt_counts};
use crate::dataset::{bench_instance, service_names};
use crate::measure::{Counters, CpuMeter, Progress, new_histogram, round3, summary};
use crate::raw::{self, open_raw};

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

pub(crate) async fn register(
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
