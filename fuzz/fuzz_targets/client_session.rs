//! A real client session of a standalone node, fed an arbitrary sequence of frames over an
//! in-memory pipe.
//!
//! Input: items as `distro_fuzz::session_input` describes (well-formed frames of any body,
//! frames of generated messages, raw garbage, pauses of tokio time with a lease pass).
//!
//! Checks: nothing panics; every answer the node writes is a whole, decodable frame of protocol
//! version 1, and pushes carry request id 0; every request is answered exactly once, in order
//! (when the input holds no raw bytes, so that the frames are known); after the input ends and
//! the pipe closes, the session finishes (no hang: the runtime's clock is paused, so a session
//! stuck waiting reaches the deadline at once), the store's invariants hold (also after a lease
//! pass), and the node still answers a fresh session's Query. A frame that does not decode
//! changes nothing: the same input without it leaves the same store.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use distro::clock::Clock;
use distro::config::Config;
use distro::net::BoxStream;
use distro::server::{Node, session};
use distro::wire::{FrameCodec, Message, PROTOCOL_VERSION, Query, ServiceName, Text, encode_frame};
use distro_fuzz::session_input::{self, Item};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio_util::codec::Decoder;

/// Pauses of one input add up to at most this much tokio time (a few idle timeouts).
const PAUSE_BUDGET_MS: u64 = 120_000;
/// Tokio time one input may take in all. Time only moves while every task waits, so a session
/// that hangs reaches this at once, and one that works never comes near it.
const DEADLINE: Duration = Duration::from_secs(600);
/// Bytes the in-memory pipe buffers each way (small, so that back-pressure happens).
const PIPE_BYTES: usize = 16 << 10;

fn peer() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let items = session_input::parse(data);
    distro_fuzz::runtime::get().block_on(async {
        let after = within_deadline(run(items.clone())).await;
        // A frame that does not decode must change nothing: the same input without it (and
        // without what follows, which the closed session never reads) leaves the same store.
        let raw = items.iter().any(|i| matches!(i, Item::Raw(_)));
        let bad = items
            .iter()
            .position(|i| matches!(i, Item::Frame { decodes: false, .. }));
        if let (false, Some(bad)) = (raw, bad) {
            let without = within_deadline(run(items[..bad].to_vec())).await;
            assert!(
                after == without,
                "the frame that did not decode (item {bad}) changed the store:\n\
                 with it:    {after:#?}\nwithout it: {without:#?}"
            );
        }
    });
});

async fn within_deadline<T>(f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(t) => t,
        Err(_) => panic!("the session or the node did not finish within {DEADLINE:?}"),
    }
}

/// Every record of the store (tombstones included) as text, sorted.
fn store_contents(node: &Node) -> Vec<String> {
    let mut v = Vec::new();
    node.store.for_each_record(|name, id, r| {
        v.push(format!(
            "{name} {} {}:{} {:?} alive={} healthy={} lapsed={} session={:#x}",
            id.cluster, id.ip, id.port, r.version, r.alive, r.healthy, r.lapsed, r.session
        ))
    });
    v.sort();
    v
}

/// Runs one session over `items`, checks it, and returns the store's contents after it.
async fn run(items: Vec<Item>) -> Vec<String> {
    let mut config = Config::default();
    config.lease_floor_ms = 100;
    let idle_ms = config.client_idle_timeout_ms;
    // A fixed wall-clock start, so that an input replays with the same versions.
    let node = Node::new(config, Clock::starting_at(1_700_000_000_000));

    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let serving = tokio::spawn(session::serve(
        node.clone(),
        Box::new(server) as BoxStream,
        peer(),
    ));
    let (rd, mut wr) = tokio::io::split(client);
    let reading = tokio::spawn(read_answers(rd));
    // The request ids the session must answer, in order: every frame written, up to the first
    // one that does not decode (answered with an Error, then the session closes).
    let mut expected = Vec::new();
    let mut raw = false;
    let mut idled = false;
    let mut paused_ms = 0;
    for item in items {
        let written = match item {
            Item::Frame {
                bytes,
                request_id,
                decodes,
            } => {
                let ok = wr.write_all(&bytes).await.is_ok();
                if ok {
                    expected.push(request_id);
                }
                // The session answers a frame that does not decode with an Error and closes.
                ok && decodes
            }
            Item::Raw(bytes) => {
                raw = true;
                wr.write_all(&bytes).await.is_ok()
            }
            Item::Pause(ms) => {
                let ms = ms.min(PAUSE_BUDGET_MS - paused_ms);
                paused_ms += ms;
                idled |= ms >= idle_ms;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                node.store.lease_pass();
                true
            }
        };
        if !written {
            // The session closed (or is closing) the connection: a bad frame, an idle timeout.
            break;
        }
    }
    let _ = wr.shutdown().await;
    serving.await.expect("the session task failed");
    drop(wr);
    let answers = reading.await.expect("the answer reader failed");
    check_store(&node, "after the session");
    let contents = store_contents(&node);
    if trace() {
        eprintln!("after the session: {} live instances", node.store.len());
    }
    // With raw bytes in the stream the frames (and their ids) are not known here.
    if !raw {
        let answered: Vec<u32> = answers.iter().map(|(rid, _)| *rid).collect();
        let complete = if idled {
            // The session may have idled out during a long pause: a prefix is answered.
            expected.starts_with(&answered)
        } else {
            answered == expected
        };
        assert!(
            complete,
            "requests {expected:?} were answered as {answered:?} (each exactly once, in order)"
        );
    }

    query_on_a_fresh_session(&node).await;
    node.store.lease_pass();
    check_store(&node, "after a lease pass");
    contents
}

/// Set when replaying one input, to see what the node answered.
fn trace() -> bool {
    std::env::var_os("DISTRO_FUZZ_TRACE").is_some()
}

fn check_store(node: &Node, when: &str) {
    if let Err(e) = node.store.check_invariants() {
        panic!("{when}: {e}");
    }
}

/// Reads every answer until the node closes its side; each must be a whole frame that
/// decodes. Returns the answers that are not pushes, with their request ids, in order.
async fn read_answers(mut rd: ReadHalf<tokio::io::DuplexStream>) -> Vec<(u32, Message)> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut answers = Vec::new();
    loop {
        let n = rd
            .read_buf(&mut buf)
            .await
            .expect("reading an in-memory pipe");
        while let Some(frame) = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("the node sent bytes that do not frame: {e}"))
        {
            assert_eq!(frame.version, PROTOCOL_VERSION, "the node sent {frame:?}");
            let msg = frame.message().unwrap_or_else(|e| {
                panic!("the node sent a frame that does not decode: {e}; {frame:?}")
            });
            if trace() {
                eprintln!("answer to {}: {msg:?}", frame.request_id);
            }
            match msg {
                Message::Push(_) => assert_eq!(frame.request_id, 0, "a push carries request id 0"),
                _ => answers.push((frame.request_id, msg)),
            }
        }
        if n == 0 {
            assert!(
                buf.is_empty(),
                "the node closed the connection in the middle of a frame ({} bytes left)",
                buf.len()
            );
            return answers;
        }
    }
}

/// The node still serves: a new connection's Query is answered with the service's list.
async fn query_on_a_fresh_session(node: &Arc<Node>) {
    const RID: u32 = 0x00F0_0D00;
    let name = ServiceName::new("public", "DEFAULT_GROUP", "orders");
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let serving = tokio::spawn(session::serve(
        node.clone(),
        Box::new(server) as BoxStream,
        peer(),
    ));
    let (rd, mut wr) = tokio::io::split(client);
    let reading = tokio::spawn(read_answers(rd));
    let query = Message::Query(Query {
        name: name.clone(),
        cluster: Text::default(),
        healthy_only: false,
    });
    wr.write_all(&encode_frame(RID, 0, &query))
        .await
        .expect("a fresh session reads its first frame");
    wr.shutdown().await.expect("closing the pipe");
    serving.await.expect("the fresh session task failed");
    drop(wr);
    match reading.await.expect("the answer reader failed").as_slice() {
        [(RID, Message::QueryResult(s))] => assert_eq!(s.name, name, "answered another service"),
        other => panic!("a fresh session's Query was answered with {other:?}"),
    }
}
