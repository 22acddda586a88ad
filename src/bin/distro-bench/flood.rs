//! The `flood` scenario: what one flooding connection costs the other clients of a node
//! (`docs/security.md` §4.4, fair share).
//!
//! Probe connections (`--probes`, each one request at a time: a Query of a small service, then a
//! Register, in turn) measure their latency for `--duration-s` in each phase, in one run:
//! - `idle`: nothing else;
//! - `writes`: one connection pipelines Register and Query frames and reads no answer;
//! - `subscriber`: one connection subscribes to busy services and never reads its pushes, while
//!   a writer rewrites those services' instances as fast as the node answers it;
//! - `slow_reader`: one connection pipelines Queries of a large service and reads its answers
//!   a little at a time.
//!
//! Each flood connection is new for its phase and closed after it. The JSON holds each phase's
//! p50/p99 and the ratio of each flood phase's percentiles to the idle ones.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use distro::client::{Client, ClientConfig};
use distro::model::{Instance, InstanceKey, ServiceName};
use distro::net::BoxStream;
use distro::wire::{
    Frame, FrameCodec, Hello, Message, PROTOCOL_VERSION, Query, Register, Token, encode_frame,
};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::conn::{REQUEST_TIMEOUT, client_token};
use crate::measure::{insert_percentiles, micros, new_histogram};

/// Instances of the large service the slow reader queries (some 250 KB per answer).
const BIG_SERVICE_SIZE: u32 = 1_000;
/// Busy services the never-reading subscriber subscribes to, and instances in each.
const BUSY_SERVICES: u32 = 10;
const BUSY_SERVICE_SIZE: u32 = 100;
/// Frames a flooder writes per socket write.
const FLOOD_CHUNK_FRAMES: u32 = 256;
/// Bytes the slow reader reads at a time, and its pause after each read.
const SLOW_READ_BYTES: usize = 16 << 10;
const SLOW_READ_PAUSE: Duration = Duration::from_millis(10);

fn svc(name: &str) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", name)
}

/// An instance with ~200 bytes of metadata.
fn heavy(service: &ServiceName, i: u32, generation: u32) -> Instance {
    let ip = format!("10.77.{}.{}", i / 250, i % 250);
    let mut x = Instance::new(InstanceKey {
        service: service.clone(),
        cluster: "DEFAULT".into(),
        ip: ip.into(),
        port: 7000,
    });
    x.lease = crate::dataset::BENCH_LEASE;
    x.metadata = vec![(
        "generation".into(),
        format!("{generation:08}{}", "x".repeat(192)).into(),
    )];
    x
}

/// A raw connection that said Hello (and presented the run's token).
async fn open(addr: SocketAddr) -> anyhow::Result<(BoxStream, BytesMut)> {
    let mut s = crate::conn::dialer()
        .connect(addr.to_string())
        .await
        .with_context(|| format!("connect {addr}"))?;
    let hello = Message::Hello(Hello {
        max_version: PROTOCOL_VERSION,
        client_name: "distro-bench-flood".into(),
    });
    let mut buf = BytesMut::new();
    s.write_all(&encode_frame(1, 0, &hello)).await?;
    next_frame(&mut s, &mut buf).await?;
    if let Some(t) = client_token() {
        s.write_all(&encode_frame(2, 0, &Message::Auth(Token::new(t))))
            .await?;
        next_frame(&mut s, &mut buf).await?;
    }
    Ok((s, buf))
}

async fn next_frame(s: &mut BoxStream, buf: &mut BytesMut) -> anyhow::Result<Frame> {
    let mut codec = FrameCodec::default();
    loop {
        if let Some(f) = codec.decode(buf)? {
            return Ok(f);
        }
        let n = tokio::time::timeout(REQUEST_TIMEOUT, s.read_buf(buf))
            .await
            .context("no answer within the request timeout")??;
        if n == 0 {
            bail!("the node closed the connection");
        }
    }
}

/// One probe connection: a request at a time until `stop`, each latency recorded.
async fn probe(
    addr: SocketAddr,
    n: u32,
    stop: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let (mut s, mut buf) = open(addr).await?;
    let mut hist = new_histogram();
    let small = svc(&format!("flood-probe-{n}"));
    let query = Message::Query(Query {
        name: small.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    let mut id = 10u32;
    let mut i = 0u32;
    while !stop.is_cancelled() {
        id += 1;
        i += 1;
        let msg = if i % 2 == 0 {
            query.clone()
        } else {
            Message::Register(Register {
                session_bound: false,
                instances: vec![heavy(&small, i % 50, i)],
            })
        };
        let started = Instant::now();
        s.write_all(&encode_frame(id, 0, &msg)).await?;
        let f = next_frame(&mut s, &mut buf).await?;
        if f.request_id != id {
            bail!("probe got an answer to {} for {id}", f.request_id);
        }
        if let Message::Error(e) = f.message()? {
            bail!("probe request refused: {}", e.message);
        }
        hist.record(micros(started.elapsed())).ok();
    }
    Ok(hist)
}

/// Runs the probes for `duration`; their latencies merged.
async fn measure(
    addr: SocketAddr,
    probes: u32,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..probes)
        .map(|n| tokio::spawn(probe(addr, n, stop.clone())))
        .collect();
    tokio::time::sleep(duration).await;
    stop.cancel();
    let mut all = new_histogram();
    for t in tasks {
        all.add(t.await??).ok();
    }
    Ok(all)
}

/// A flooder that pipelines Register and Query frames and never reads.
async fn flood_writes(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    let (mut s, _) = open(addr).await?;
    let name = svc("flood-writes");
    let query = Message::Query(Query {
        name: name.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    let mut id = 10u32;
    let mut out = BytesMut::new();
    let mut r = 0u32;
    loop {
        for _ in 0..FLOOD_CHUNK_FRAMES {
            r += 1;
            let reg = Message::Register(Register {
                session_bound: false,
                instances: vec![heavy(&name, r % 100, r)],
            });
            id = id.wrapping_add(1).max(10);
            out.extend_from_slice(&encode_frame(id, 0, &reg));
            id = id.wrapping_add(1).max(10);
            out.extend_from_slice(&encode_frame(id, 0, &query));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            w = s.write_all(&out) => w?,
        }
        out.clear();
    }
}

/// A subscriber of the busy services that never reads, and a writer that keeps them busy.
async fn flood_subscriber(
    addr: SocketAddr,
    churn: Client,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (mut s, _) = open(addr).await?;
    let busy: Vec<ServiceName> = (0..BUSY_SERVICES)
        .map(|b| svc(&format!("flood-busy-{b}")))
        .collect();
    let mut out = BytesMut::new();
    for (i, b) in busy.iter().enumerate() {
        out.extend_from_slice(&encode_frame(
            10 + i as u32,
            0,
            &Message::Subscribe(b.clone()),
        ));
    }
    s.write_all(&out).await?;
    let mut generation = 0u32;
    while !stop.is_cancelled() {
        generation += 1;
        for b in &busy {
            let batch = (0..BUSY_SERVICE_SIZE)
                .map(|i| heavy(b, i, generation))
                .collect();
            churn.register_batch(batch).await?;
        }
    }
    drop(s);
    Ok(())
}

/// A connection that pipelines Queries of the big service and reads slowly.
async fn flood_slow_reader(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    let (s, _) = open(addr).await?;
    let (mut rd, mut wr) = distro::net::split(s);
    let q = Message::Query(Query {
        name: svc("flood-big"),
        cluster: "".into(),
        healthy_only: false,
    });
    let writer = async move {
        let mut id = 10u32;
        loop {
            let mut out = BytesMut::new();
            for _ in 0..FLOOD_CHUNK_FRAMES {
                id = id.wrapping_add(1).max(10);
                out.extend_from_slice(&encode_frame(id, 0, &q));
            }
            wr.write_all(&out).await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    let reader = async move {
        let mut buf = vec![0u8; SLOW_READ_BYTES];
        loop {
            if rd.read(&mut buf).await? == 0 {
                bail!("the node closed the slow reader");
            }
            tokio::time::sleep(SLOW_READ_PAUSE).await;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = writer => r,
        r = reader => r,
    }
}

/// Runs the scenario against the first server.
pub async fn flood(
    servers: &[String],
    probes: u32,
    duration_s: f64,
) -> anyhow::Result<Map<String, Value>> {
    let addr: SocketAddr = tokio::net::lookup_host(&servers[0])
        .await?
        .next()
        .context("no address for the first server")?;
    let mut config = ClientConfig::new([servers[0].clone()]);
    if let Some(t) = client_token() {
        config = config.with_token(t);
    }
    let setup = Client::connect(config.clone()).await?;
    let big = svc("flood-big");
    let all: Vec<Instance> = (0..BIG_SERVICE_SIZE).map(|i| heavy(&big, i, 0)).collect();
    for chunk in all.chunks(500) {
        setup.register_batch(chunk.to_vec()).await?;
    }
    let duration = Duration::from_secs_f64(duration_s);
    let mut out = Map::new();
    eprintln!("distro-bench: flood: idle");
    let idle = measure(addr, probes, duration).await?;
    let mut phases = Map::new();
    phases.insert("idle".into(), summary(&idle, None));
    for phase in ["writes", "subscriber", "slow_reader"] {
        eprintln!("distro-bench: flood: {phase}");
        let stop = CancellationToken::new();
        let flooder = match phase {
            "writes" => tokio::spawn(flood_writes(addr, stop.clone())),
            "subscriber" => {
                let churn = Client::connect(config.clone()).await?;
                tokio::spawn(flood_subscriber(addr, churn, stop.clone()))
            }
            _ => tokio::spawn(flood_slow_reader(addr, stop.clone())),
        };
        // Let the flood fill the node's buffers for it before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hist = measure(addr, probes, duration).await?;
        stop.cancel();
        if let Ok(Err(e)) = flooder.await {
            eprintln!("distro-bench: flood: the {phase} flooder ended: {e:#}");
        }
        phases.insert(phase.into(), summary(&hist, Some(&idle)));
    }
    out.insert("scenario".into(), json!("flood"));
    out.insert("probes".into(), json!(probes));
    out.insert("duration_s_per_phase".into(), json!(duration_s));
    out.insert("phases".into(), Value::Object(phases));
    Ok(out)
}

fn summary(hist: &Histogram<u64>, idle: Option<&Histogram<u64>>) -> Value {
    let mut m = Map::new();
    m.insert("requests".into(), json!(hist.len()));
    insert_percentiles(&mut m, "", hist);
    if let Some(idle) = idle.filter(|i| !i.is_empty() && !hist.is_empty()) {
        let ratio = |q: f64| {
            let r = hist.value_at_quantile(q) as f64 / idle.value_at_quantile(q).max(1) as f64;
            json!((r * 100.0).round() / 100.0)
        };
        m.insert("p50_ratio_to_idle".into(), ratio(0.5));
        m.insert("p99_ratio_to_idle".into(), ratio(0.99));
    }
    Value::Object(m)
}
