//! The `beat` scenario: a data set loaded, then renewed in Beat frames over raw connections
//! for a while.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use distro::model::{BEAT_KEYS_MAX, InstanceKey};
use distro::wire::{Message, encode_frame};
use serde_json::{Map, Value, json};

use crate::conn::{CONVERGE_WAIT, NodeStatus, open_conns};
use crate::dataset::{bench_instance, load_data_set, service_names};
use crate::measure::{Counters, CpuMeter, Progress, new_histogram, round3, summary};
use crate::raw::{self, open_raw};

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

pub(crate) async fn beat(
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
