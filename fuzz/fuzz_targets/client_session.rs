//! A real client session of a standalone node, fed an arbitrary sequence of frames over an
//! in-memory pipe.
//!
//! Input: a mode byte (bit 0: the node has a token file, `generate::token_file`), then items as
//! `distro_fuzz::session_input` describes (well-formed frames of any body, frames of generated
//! messages — Auth among them —, raw garbage, pauses of tokio time with a lease pass).
//!
//! Checks: nothing panics; every answer the node writes is a whole, decodable frame of protocol
//! version 1, and pushes carry request id 0; every request is answered exactly once, in order
//! (when the input holds no raw bytes, so that the frames are known); after the input ends and
//! the pipe closes, the session finishes (no hang: the runtime's clock is paused, so a session
//! stuck waiting reaches the deadline at once), the store's invariants hold (also after a lease
//! pass), and the node still answers a fresh session's Query. A frame that does not decode
//! changes nothing: the same input without it leaves the same store.
//!
//! With a token file: the session ends right after its third `Unauthenticated` answer (the
//! requests after it are not answered); a session whose Auth was never accepted changes
//! nothing, and one whose accepted token may write only some namespaces leaves records in those
//! only.

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
use distro::api::AUTH_FAILURES_MAX;
use distro::auth::TokenSet;
use distro::wire::{ErrorCode, HEADER_LEN, LEN_PREFIX, Message, Opcode, Query, Token, encode_frame};
use distro::model::{ServiceName, Text};
use distro_fuzz::generate;
use distro_fuzz::harness::{self, peer_addr, within_deadline};
use distro_fuzz::session_input::{self, Item};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

/// Pauses of one input add up to at most this much tokio time (a few idle timeouts).
const PAUSE_BUDGET_MS: u64 = 120_000;
/// Bytes the in-memory pipe buffers each way (small, so that back-pressure happens).
const PIPE_BYTES: usize = 16 << 10;

fuzz_target!(|data: &[u8]| {
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let guarded = mode & 1 == 1;
    let items = session_input::parse(rest);
    distro_fuzz::runtime::get().block_on(async {
        let after = within_deadline(run(items.clone(), guarded)).await;
        // A frame that does not decode must change nothing: the same input without it (and
        // without what follows, which the closed session never reads) leaves the same store.
        if let Some(bad) = session_input::first_bad_frame(&items) {
            let without = within_deadline(run(items[..bad].to_vec(), guarded)).await;
            harness::assert_same_store(&after, &without, bad);
        }
    });
});

/// The message of a framed item, if it decodes.
fn message_of(bytes: &[u8]) -> Option<Message> {
    let op = Opcode::from_u8(*bytes.get(LEN_PREFIX + 1)?).ok()?;
    let body = bytes::Bytes::copy_from_slice(bytes.get(LEN_PREFIX + HEADER_LEN..)?);
    Message::decode(op, body).ok()
}

/// Runs one session over `items` (against a node with the fuzz token file if `guarded`),
/// checks it, and returns the store's contents after it.
async fn run(items: Vec<Item>, guarded: bool) -> Vec<String> {
    let config = Config {
        lease_floor_ms: 100,
        ..Config::default()
    };
    let idle_ms = config.client_idle_timeout_ms;
    let node = Node::new(config, Clock::starting_at(distro_fuzz::WALL_START_MS));
    if guarded {
        let set = TokenSet::parse(generate::token_file(), "fuzz").expect("the fuzz token file");
        node.tokens.install(set);
    }
    // The token of each Auth frame, by request id: which one (if any) the node accepted decides
    // what the session may have changed.
    let mut tokens_sent = std::collections::HashMap::new();

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
                if let Some(Message::Auth(t)) = message_of(&bytes) {
                    tokens_sent.insert(request_id, t.as_str().to_string());
                }
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
        let refusals = answers
            .iter()
            .filter(|(_, m)| {
                matches!(m, Message::Error(e) if e.kind() == Some(ErrorCode::Unauthenticated))
            })
            .count();
        assert!(
            refusals as u32 <= AUTH_FAILURES_MAX,
            "the session went on after {AUTH_FAILURES_MAX} refusals for want of a token"
        );
        let complete = if idled || refusals as u32 == AUTH_FAILURES_MAX {
            // The session may have idled out during a long pause, or closed after its third
            // refusal (that one answered last): a prefix is answered.
            expected.starts_with(&answered)
        } else {
            answered == expected
        };
        assert!(
            complete,
            "requests {expected:?} were answered as {answered:?} (each exactly once, in order)"
        );
        if refusals as u32 == AUTH_FAILURES_MAX && !idled {
            assert!(
                matches!(answers.last(), Some((_, Message::Error(e))) if e.kind() == Some(ErrorCode::Unauthenticated)),
                "the session answered more after its last refusal: {answers:?}"
            );
        }
    }
    if guarded && !raw {
        // What the session could write: nothing without an accepted token; with one, only the
        // namespaces it may write.
        let accepted = answers.iter().find_map(|(rid, m)| match m {
            Message::Ack(1) => tokens_sent.get(rid),
            _ => None,
        });
        let writable = accepted.map_or(Some(&[][..]), |t| generate::writable_by(t));
        if let Some(allowed) = writable {
            node.store.for_each_record(|name, id, _| {
                assert!(
                    allowed.contains(&name.namespace.as_str()),
                    "the session (token {accepted:?}) wrote {name} {}:{} without the right",
                    id.ip,
                    id.port
                );
            });
        }
    }

    query_on_a_fresh_session(&node, guarded).await;
    node.store.lease_pass();
    harness::check_store(&node.store, "after a lease pass");
    contents
}

/// The node still serves: a new connection's Query (after its token, on a guarded node) is
/// answered with the service's list.
async fn query_on_a_fresh_session(node: &Arc<Node>, guarded: bool) {
    const RID: u32 = 0x00F0_0D00;
    const AUTH_RID: u32 = RID - 1;
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
    if guarded {
        let auth = Message::Auth(Token::new(generate::TOKENS[1]));
        wr.write_all(&encode_frame(AUTH_RID, 0, &auth))
            .await
            .expect("a fresh session reads its first frame");
    }
    wr.write_all(&encode_frame(RID, 0, &query))
        .await
        .expect("a fresh session reads its frames");
    wr.shutdown().await.expect("closing the pipe");
    serving.await.expect("the fresh session task failed");
    drop(wr);
    let answers = reading.await.expect("the answer reader failed");
    let query_answer = match (guarded, answers.as_slice()) {
        (false, [q]) => q,
        (true, [(AUTH_RID, Message::Ack(1)), q]) => q,
        (_, other) => panic!("a fresh session was answered with {other:?}"),
    };
    match query_answer {
        (RID, Message::QueryResult(s)) => assert_eq!(s.name, name, "answered another service"),
        other => panic!("a fresh session's Query was answered with {other:?}"),
    }
}
