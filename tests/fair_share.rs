//! Fair share over real sockets (`docs/security.md` §4.4): one connection floods a node — it
//! pipelines writes and reads none of its answers, subscribes to busy services and never reads
//! its pushes, or reads large answers slowly — while other clients register, query and receive
//! pushes. The others are served throughout; the node holds the flooder back (counted in
//! `distro_client_throttled_total`) instead of buffering for it, its queued bytes and requests
//! in flight stay within the per-connection limits, and the flooder, merely slow, is not
//! disconnected: once it reads, it gets every answer it was owed.
//!
//! The flooders' sockets get a small receive buffer so that the node's writes to them fill up
//! after little data. Nothing here asserts how fast anything happened.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{DEADLINE, eventually, inst, name};
use distro::frontend::share::{QUEUED_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX};
use distro::metrics::{Metrics, Throttle};
use distro::model::{Instance, InstanceKey, ServiceName, ServiceSnapshot};
use distro::wire::{
    Frame, FrameCodec, Hello, Message, PROTOCOL_VERSION, Query, Register, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Decoder;

/// The flooders' receive buffer (the kernel rounds it up; a few KiB either way).
const FLOODER_RECV_BUFFER_BYTES: u32 = 4096;
/// Bytes the other clients' own answers may add to the node's queued bytes at any moment on
/// top of the flooder's share (a few small answers in flight, at their minimum cost each).
const OTHERS_QUEUED_BYTES: u64 = 64 << 10;
/// Requests the other clients may have in flight on top of the flooder's.
const OTHERS_IN_FLIGHT: u64 = 16;

/// A connection with a small receive buffer.
async fn flooder(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .set_recv_buffer_size(FLOODER_RECV_BUFFER_BYTES)
        .unwrap();
    let stream: TcpStream = socket.connect(addr).await.expect("flooder connects");
    stream.set_nodelay(true).unwrap();
    stream.into_split()
}

/// Frames read one socket read at a time.
struct Frames {
    rd: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Frames {
    fn new(rd: OwnedReadHalf) -> Frames {
        Frames {
            rd,
            buf: BytesMut::new(),
            codec: FrameCodec::default(),
        }
    }

    /// The next frame; fails the test if the node closes the connection or sends nothing
    /// within the deadline.
    async fn next(&mut self) -> Frame {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).expect("a valid frame") {
                return f;
            }
            let n = tokio::time::timeout(DEADLINE, self.rd.read_buf(&mut self.buf))
                .await
                .expect("the node sends within the deadline")
                .expect("read");
            assert!(n > 0, "the node closed the flooder's connection");
        }
    }
}

fn hello() -> Message {
    Message::Hello(Hello {
        max_version: PROTOCOL_VERSION,
        client_name: "flooder".into(),
    })
}

/// An instance with ~200 bytes of metadata (so that lists and pushes weigh something).
fn heavy(service: &ServiceName, i: u32, generation: u32) -> Instance {
    let mut x = inst(service, &format!("10.9.{}.{}", i / 250, i % 250), 7000);
    x.metadata = vec![(
        "generation".into(),
        format!("{generation:04}{}", "x".repeat(196)).into(),
    )];
    x
}

/// Asserts the node's queued bytes and requests in flight are within one flooder's share
/// (plus what the other clients' few requests add).
fn assert_within_share(m: &Metrics) {
    let (queued, in_flight) = m.client_queues.totals();
    assert!(
        queued <= QUEUED_BYTES_MAX as u64 + OTHERS_QUEUED_BYTES,
        "the node queues {queued} bytes for its clients, beyond one connection's share"
    );
    assert!(
        in_flight <= REQUESTS_IN_FLIGHT_MAX as u64 + OTHERS_IN_FLIGHT,
        "the node holds {in_flight} requests in flight, beyond one connection's share"
    );
}

/// Other clients register, query and receive pushes, each step answered; the share is checked
/// between the steps.
async fn others_are_served(addr: SocketAddr, m: &Metrics, tag: &str) {
    let svc = name(&format!("others-{tag}"));
    let writer = common::client(&[addr]).await;
    let reader = common::client(&[addr]).await;
    let mut sub = reader.subscribe(&svc).await.expect("subscribe is answered");
    for i in 0..20u32 {
        writer
            .register(inst(&svc, "10.1.0.1", 6000 + i as u16))
            .await
            .expect("register is answered");
        assert_within_share(m);
    }
    // (On a clustered node the writes its peers own come back by sync: ask until they have.)
    eventually("a query to see every register", async || {
        let snap = reader.query(&svc, false).await.expect("query is answered");
        (snap.instances.len() == 20).then_some(())
    })
    .await;
    eventually(
        "the other subscriber's pushes to bring all 20 instances",
        async || {
            let latest = sub.latest()?;
            (latest.instances.len() == 20).then_some(())
        },
    )
    .await;
    // The subscription delivers as a stream too.
    let first = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("a push arrives")
        .expect("the subscription is open");
    assert_eq!(first.name, svc);
    assert_within_share(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_requests_and_reads_no_answer_is_held_back_and_others_are_served() {
    let node = common::start().await;
    let m = node.node.metrics.clone();
    let (rd, mut wr) = flooder(node.addr).await;
    let svc = name("flood-writes");
    // Each round writes one of 100 heavy instances and queries the service (some 25 KiB per
    // answer): tens of MB of answers, far more than the kernel's socket buffers hold.
    const ROUNDS: u32 = 1_000;
    const SIZE: u32 = 100;
    let query = Message::Query(Query {
        name: svc.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    // Ids: 1 the Hello, then a Register (even) and a Query (odd) per round. The task blocks
    // once the node stops reading.
    let flood = tokio::spawn(async move {
        let mut out = BytesMut::new();
        out.extend_from_slice(&encode_frame(1, 0, &hello()));
        for r in 0..ROUNDS {
            let reg = Message::Register(Register {
                session_bound: false,
                instances: vec![heavy(&svc, r % SIZE, r / SIZE)],
            });
            out.extend_from_slice(&encode_frame(2 * r + 2, 0, &reg));
            out.extend_from_slice(&encode_frame(2 * r + 3, 0, &query));
            if out.len() > 64 << 10 {
                wr.write_all(&out).await.expect("flood write");
                out.clear();
            }
        }
        wr.write_all(&out).await.expect("flood write");
        wr
    });
    eventually("the node to hold the flooder back", async || {
        (m.throttled_count(Throttle::QueuedBytes) > 0).then_some(())
    })
    .await;
    assert_within_share(&m);
    others_are_served(node.addr, &m, "writes").await;
    // The flooder reads at last: every request is answered, in order; nothing was dropped.
    let mut frames = Frames::new(rd);
    let first = frames.next().await;
    assert_eq!(first.request_id, 1);
    assert!(matches!(first.message().unwrap(), Message::HelloOk(_)));
    for r in 0..ROUNDS {
        let f = frames.next().await;
        assert_eq!(f.request_id, 2 * r + 2, "answers come in request order");
        assert_eq!(f.message().unwrap(), Message::Ack(1));
        let f = frames.next().await;
        assert_eq!(f.request_id, 2 * r + 3, "answers come in request order");
        match f.message().unwrap() {
            Message::QueryResult(s) => assert_eq!(s.instances.len(), (r + 1).min(SIZE) as usize),
            other => panic!("expected a query result, got {other:?}"),
        }
    }
    let _wr = flood.await.unwrap();
    eventually("the flooder's share to be given back", async || {
        (m.client_queues.totals().0 == 0).then_some(())
    })
    .await;
    assert_eq!(
        m.subscribers_dropped_lag.get(),
        0,
        "nobody was disconnected"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_large_answers_is_served_in_full_at_its_own_pace_and_others_meanwhile() {
    let node = common::start().await;
    let m = node.node.metrics.clone();
    let big = name("big");
    const SIZE: u32 = 1_000;
    let loader = common::client(&[node.addr]).await;
    let all: Vec<Instance> = (0..SIZE).map(|i| heavy(&big, i, 0)).collect();
    for chunk in all.chunks(500) {
        loader.register_batch(chunk.to_vec()).await.unwrap();
    }
    // Some 200 KiB per answer: 60 of them are a dozen times the flooder's share.
    const QUERIES: u32 = 60;
    let (rd, mut wr) = flooder(node.addr).await;
    let q = Message::Query(Query {
        name: big.clone(),
        cluster: "".into(),
        healthy_only: false,
    });
    let mut out = BytesMut::new();
    for id in 1..=QUERIES {
        out.extend_from_slice(&encode_frame(id, 0, &q));
    }
    wr.write_all(&out).await.unwrap();
    // It reads a little now and then, and checks every answer in full.
    let reader = tokio::spawn(async move {
        let mut frames = Frames::new(rd);
        for id in 1..=QUERIES {
            let f = frames.next().await;
            assert_eq!(f.request_id, id);
            match f.message().unwrap() {
                Message::QueryResult(s) => assert_eq!(s.instances.len(), SIZE as usize),
                other => panic!("expected a query result, got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    eventually("the node to hold the slow reader back", async || {
        (m.throttled_count(Throttle::QueuedBytes) > 0).then_some(())
    })
    .await;
    others_are_served(node.addr, &m, "slow").await;
    tokio::time::timeout(DEADLINE * 3, reader)
        .await
        .expect("the slow reader gets every answer")
        .unwrap();
    drop(wr);
    assert_eq!(
        m.subscribers_dropped_lag.get(),
        0,
        "nobody was disconnected"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_its_pushes_does_not_hold_up_other_subscribers() {
    let node = common::start().await;
    let m = node.node.metrics.clone();
    const SERVICES: u32 = 10;
    const SIZE: u32 = 100;
    const ROUNDS: u32 = 8;
    let services: Vec<ServiceName> = (0..SERVICES).map(|s| name(&format!("busy-{s}"))).collect();
    let (rd, mut wr) = flooder(node.addr).await;
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode_frame(1, 0, &hello()));
    for (i, s) in services.iter().enumerate() {
        out.extend_from_slice(&encode_frame(
            i as u32 + 2,
            0,
            &Message::Subscribe(s.clone()),
        ));
    }
    wr.write_all(&out).await.unwrap();
    // Another subscriber of the first busy service, reading as it should.
    let watcher = common::client(&[node.addr]).await;
    let watched = watcher.subscribe(&services[0]).await.unwrap();
    // Every round rewrites every instance of every busy service: some 2 MB of news per round
    // for the flooder, which reads none of it.
    let writer = common::client(&[node.addr]).await;
    for generation in 0..ROUNDS {
        for s in &services {
            let batch: Vec<Instance> = (0..SIZE).map(|i| heavy(s, i, generation)).collect();
            writer
                .register_batch(batch)
                .await
                .expect("writes are answered");
        }
        assert_within_share(&m);
    }
    let last = format!("{:04}", ROUNDS - 1);
    let is_current = |snap: &ServiceSnapshot| {
        snap.instances.len() == SIZE as usize
            && snap
                .instances
                .iter()
                .all(|i| i.metadata[0].1.as_str().starts_with(&last))
    };
    eventually(
        "the reading subscriber to hold the last round",
        async || watched.latest().filter(|s| is_current(s)).map(|_| ()),
    )
    .await;
    others_are_served(node.addr, &m, "pushes").await;
    // The flooder reads at last: its subscriptions were answered and its pushes, coalesced while
    // it did not read, bring it to the current lists of every service.
    let mut frames = Frames::new(rd);
    let mut lists: std::collections::HashMap<ServiceName, ServiceSnapshot> = Default::default();
    let mut answered = 0;
    while answered < SERVICES + 1
        || !services
            .iter()
            .all(|s| lists.get(s).is_some_and(is_current))
    {
        let f = frames.next().await;
        match f.message().unwrap() {
            Message::Push(s) => {
                lists.insert(s.name.clone(), s);
            }
            Message::PushDelta(d) => {
                let held = lists.get(&d.name).expect("a whole list before a delta");
                let next = held.apply(&d).expect("a delta that follows on");
                lists.insert(d.name.clone(), next);
            }
            Message::HelloOk(_) | Message::Ack(1) => answered += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(
        m.subscribers_dropped_lag.get(),
        0,
        "nobody was disconnected"
    );
    drop(wr);
    node.stop().await;
}

/// A clustered node forwards writes to their owners; a flooder's forwarded writes wait for
/// their answers to be queued while holding their request slots, so the node stops reading
/// it at `REQUESTS_IN_FLIGHT_MAX` — it does not start a task per write without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_of_a_flooder_stay_within_its_requests_in_flight() {
    use cluster_support::{TestCluster, keys_owned_by, serial};
    let _serial = serial().await;
    let tc = TestCluster::start(2).await;
    let m = tc.node(1).metrics.clone();
    let svc = name("flood-forwards");
    const WRITES: usize = 20_000;
    let keys: Vec<InstanceKey> = keys_owned_by(&tc.store(1).ownership(), 2, &svc, 3, WRITES);
    let (rd, mut wr) = flooder(tc.addr(1)).await;
    let flood = tokio::spawn(async move {
        let mut out = BytesMut::new();
        out.extend_from_slice(&encode_frame(1, 0, &hello()));
        for (i, k) in keys.into_iter().enumerate() {
            let reg = Message::Register(Register {
                session_bound: false,
                instances: vec![Instance::new(k)],
            });
            out.extend_from_slice(&encode_frame(i as u32 + 2, 0, &reg));
            if out.len() > 64 << 10 {
                wr.write_all(&out).await.expect("flood write");
                out.clear();
            }
        }
        wr.write_all(&out).await.expect("flood write");
        wr
    });
    eventually(
        "node 1 to stop reading the flooder at its requests in flight",
        async || (m.throttled_count(Throttle::RequestsInFlight) > 0).then_some(()),
    )
    .await;
    assert_within_share(&m);
    // Others write through node 1 (forwarded too), query and get pushes.
    others_are_served(tc.addr(1), &m, "forwards").await;
    let mut frames = Frames::new(rd);
    let mut acked = 0;
    while acked < WRITES {
        let f = frames.next().await;
        match f.message().unwrap() {
            Message::HelloOk(_) => {}
            Message::Ack(1) => acked += 1,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
    let _wr = flood.await.unwrap();
    let at_owner = tc.client(2).await;
    let snap = at_owner.query(&svc, false).await.unwrap();
    assert_eq!(
        snap.instances.len(),
        WRITES,
        "the owner holds every forwarded write"
    );
}

#[path = "cluster_support/mod.rs"]
mod cluster_support;
