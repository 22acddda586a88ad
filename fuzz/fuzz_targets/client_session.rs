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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use distro::clock::Clock;
use distro::config::Config;
use distro::net::BoxStream;
use distro::api::Api;
use distro::frontend::native::session;
use distro::node::Node;
use distro::wire::{Message, Query, encode_frame};
use distro::model::{ServiceName, Text};
use distro_fuzz::harness::{self, peer_addr, within_deadline};
use distro_fuzz::session_input::{self, Item};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

/// Pauses of one input add up to at most this much tokio time (a few idle timeouts).
const PAUSE_BUDGET_MS: u64 = 120_000;
/// Bytes the in-memory pipe buffers each way (small, so that back-pressure happens).
const PIPE_BYTES: usize = 16 << 10;

fuzz_target!(|data: &[u8]| {
    let items = session_input::parse(data);
    distro_fuzz::runtime::get().block_on(async {
        let after = within_deadline(run(items.clone())).await;
        // A frame that does not decode must change nothing: the same input without it (and
        // without what follows, which the closed session never reads) leaves the same store.
        if let Some(bad) = session_input::first_bad_frame(&items) {
            let without = within_deadline(run(items[..bad].to_vec())).await;
            harness::assert_same_store(&after, &without, bad);
        }
    });
});

/// Runs one session over `items`, checks it, and returns the store's contents after it.
async fn run(items: Vec<Item>) -> Vec<String> {
    let config = Config {
        lease_floor_ms: 100,
        ..Config::default()
    };
    let idle_ms = config.client_idle_timeout_ms;
    let node = Node::new(config, Clock::starting_at(distro_fuzz::WALL_START_MS));

    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let serving = tokio::spawn(session::serve(
        Api::new(node.clone()),
        Box::new(server) as BoxStream,
        peer_addr(),
    ));
    let (rd, mut wr) = tokio::io::split(client);
    let reading = tokio::spawn(harness::read_answers(rd, BytesMut::new()));
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
    harness::check_store(&node.store, "after the session");
    let contents = harness::store_contents(&node.store);
    if harness::trace() {
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
    harness::check_store(&node.store, "after a lease pass");
    contents
}

/// The node still serves: a new connection's Query is answered with the service's list.
async fn query_on_a_fresh_session(node: &Arc<Node>) {
    const RID: u32 = 0x00F0_0D00;
    let name = ServiceName::new("public", "DEFAULT_GROUP", "orders");
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let serving = tokio::spawn(session::serve(
        Api::new(node.clone()),
        Box::new(server) as BoxStream,
        peer_addr(),
    ));
    let (rd, mut wr) = tokio::io::split(client);
    let reading = tokio::spawn(harness::read_answers(rd, BytesMut::new()));
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
