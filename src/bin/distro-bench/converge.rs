//! The `converge` scenario: subscribers at every node, writes at the first on an open-loop
//! schedule, and the time from each write's slot until every node has pushed it.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use distro::model::{InstanceView, ServiceName};
use distro::wire::{Message, Opcode, Register, encode_frame_into};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::conn::{CONVERGE_WAIT, REQUEST_TIMEOUT};
use crate::dataset::{bench_index, bench_instance, service_names};
use crate::measure::{
    Counters, CpuMeter, Progress, insert_percentiles, micros, new_histogram, summary,
};
use crate::raw::{self, RawConn, open_raw};

/// The services `converge` spreads its writes over.
pub(crate) fn converge_services(
    writes: u64,
    services: Option<u64>,
    service_size: Option<u64>,
) -> u64 {
    match (services, service_size) {
        (Some(m), _) => m,
        (None, Some(size)) => writes.div_ceil(size.max(1)),
        (None, None) => 1_000,
    }
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

pub(crate) async fn converge(
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
