//! The peer port: authenticates each connection, then serves what the dialing peer sends —
//! pings, forwarded writes, sync batches, digests, pulls and snapshot requests.
//!
//! A frame that cannot be decoded, or a client opcode, closes the connection with an Error
//! frame; nothing of it is applied. Pull and snapshot answers are streamed a chunk of the store
//! at a time, at most [`STREAMS_SERVED_MAX`] at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth;
use super::engine::handshake::Acceptor;
use super::sync::records_frame_mut;
use super::{Cluster, RECORDS_FRAME_BYTES};
use crate::net::{
    BoxStream, Listener, NoExtra, StreamClosed, StreamReader, StreamSender, StreamWriter,
    WriterConfig,
};
use crate::store::chunks::{RecordChunks, Selection};
use crate::wire::{ErrorBody, ErrorCode, FRAME_LEN_MAX, FrameCodec, Message, Opcode, encode_frame};

/// Deadline of the whole handshake of an incoming peer connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers queued for one peer connection; a full queue stops reading from that peer.
const ANSWER_QUEUE_MAX: usize = 256;
/// Peer connections at once. A cluster needs two per member; the rest is slack for redials.
pub const PEER_CONNECTIONS_MAX: usize = 1024;
/// A peer connection silent this long is dropped (peers ping several times a second).
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// One write to a peer gathers up to this many bytes of answers.
const ANSWER_WRITE_BATCH_BYTES: usize = 1 << 20;
/// Pull and snapshot answers this node streams at once, over all its peers. Each costs about a
/// chunk being encoded and a window of frames queued (some 6 MiB at most) and scans the store;
/// a pull comes at most once per peer and digest round, so this serves a cluster of 9 pulling
/// from one node at the same moment. Beyond it a request is answered `Overloaded` at once: the
/// puller tries again at the next digest round, a loading node asks the next member. (Making it
/// wait instead could outlast the requester's deadline for the first frame, which closes its
/// link.)
pub const STREAMS_SERVED_MAX: usize = 8;
/// Frames of one streamed answer queued for the writer at once (about 1 MiB each): the
/// producer encodes the next chunk only when the socket has taken the earlier ones.
const STREAM_WINDOW_FRAMES: usize = 4;

/// What the serving side of a node shares over its peer connections.
pub struct Serving {
    /// One permit per pull or snapshot answer that may be streamed now.
    streams: Arc<Semaphore>,
}

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            streams: Arc::new(Semaphore::new(STREAMS_SERVED_MAX)),
        }
    }
}

/// Accepts peer connections until `shutdown` (at most [`PEER_CONNECTIONS_MAX`]), each served in
/// a task of the node's tracker.
pub async fn accept_loop(
    cluster: Arc<Cluster>,
    listener: Box<dyn Listener>,
    shutdown: CancellationToken,
) {
    let tracker = cluster.tracker.clone();
    crate::net::accept_loop(
        "peer",
        &*listener,
        PEER_CONNECTIONS_MAX,
        shutdown.clone(),
        &tracker,
        move |stream, peer| serve(cluster.clone(), stream, peer, shutdown.clone()),
    )
    .await
}

async fn serve(
    cluster: Arc<Cluster>,
    stream: BoxStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let (rd, mut wr) = crate::net::split(stream);
    let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
    let peer_id =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&cluster, &mut frames, &mut wr))
            .await
        {
            Ok(Ok(id)) => id,
            Ok(Err(Refusal::Leaving)) => {
                let e = ErrorBody::new(ErrorCode::ShuttingDown, "this node is leaving the cluster");
                let _ = wr.write_all(&encode_frame(0, 0, &Message::Error(e))).await;
                return;
            }
            Ok(Err(Refusal::Unauthorized(reason))) => {
                warn!(%peer, %reason, "peer connection rejected");
                let e = ErrorBody::new(ErrorCode::Unauthorized, reason);
                let _ = wr.write_all(&encode_frame(0, 0, &Message::Error(e))).await;
                return;
            }
            Err(_) => {
                warn!(%peer, "peer handshake timed out");
                return;
            }
        };
    debug!(%peer, peer_id, "peer connected");
    let (tx, rx) = mpsc::channel::<Bytes>(ANSWER_QUEUE_MAX);
    // Cancelled by the writer when it ends (a write failed): reading on is pointless then.
    // Otherwise the writer ends once every answer (streamed ones included) is written.
    let written = CancellationToken::new();
    let writer_config = WriterConfig {
        batch_bytes: ANSWER_WRITE_BATCH_BYTES,
        write_timeout: None,
    };
    let writer = cluster.tracker.spawn(crate::net::writer::run(
        wr,
        rx,
        writer_config,
        written.clone(),
        NoExtra,
    ));
    let conn = Conn {
        cluster: cluster.clone(),
        peer: peer_id,
        answers: tx,
        shutdown: shutdown.clone(),
    };
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = written.cancelled() => break,
            n = tokio::time::timeout(PEER_IDLE_TIMEOUT, frames.next()) => n,
        };
        let frame = match next {
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(e))) => {
                info!(%peer, error = %e, "closing peer connection on a bad frame");
                let _ = conn
                    .answers
                    .send(encode_frame(
                        0,
                        0,
                        &Message::Error(ErrorBody::new(e.code(), e.to_string())),
                    ))
                    .await;
                break;
            }
            Ok(None) | Err(_) => break,
        };
        let rid = frame.request_id;
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                info!(%peer, error = %e, "closing peer connection on a bad frame");
                let _ = conn
                    .answers
                    .send(encode_frame(
                        rid,
                        0,
                        &Message::Error(ErrorBody::new(e.code(), e.to_string())),
                    ))
                    .await;
                break;
            }
        };
        cluster
            .metrics
            .peer(peer_id)
            .frame_received(frame.opcode, frame.body.len());
        if !conn.handle(rid, msg).await {
            break;
        }
    }
    drop(conn);
    let _ = writer.await;
    debug!(%peer, "peer disconnected");
}

/// One authenticated peer connection.
struct Conn {
    cluster: Arc<Cluster>,
    /// The peer's node id (from the handshake).
    peer: u16,
    answers: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
}

/// Why an incoming peer connection is not let in.
enum Refusal {
    /// The handshake failed (the reason goes back in an Unauthorized error).
    Unauthorized(String),
    /// This node is leaving: a peer that reaches it now must not count it up again (its
    /// handshake is the sign of a new incarnation, wire-spec.md §11.10).
    Leaving,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Refusal {
        Refusal::Unauthorized(reason)
    }
}

/// Acceptor side of the handshake (the checks are [`Acceptor`]'s); answers the peer's id.
async fn handshake(
    cluster: &Cluster,
    frames: &mut FramedRead<StreamReader, FrameCodec>,
    wr: &mut StreamWriter,
) -> Result<u16, Refusal> {
    let mut acceptor = Acceptor::new(&cluster.identity, auth::nonce());
    let hello = next_message(frames, "closed before the handshake").await?;
    let challenge = acceptor.on_hello(hello).map_err(|e| e.to_string())?;
    wr.write_all(&encode_frame(0, 0, &challenge))
        .await
        .map_err(|e| e.to_string())?;
    let proof = next_message(frames, "closed during the handshake").await?;
    let peer_id = acceptor.on_auth(proof).map_err(|e| e.to_string())?;
    if cluster.is_leaving() {
        return Err(Refusal::Leaving);
    }
    wr.write_all(&encode_frame(0, 0, &Message::Ack(0)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(peer_id)
}

async fn next_message(
    frames: &mut FramedRead<StreamReader, FrameCodec>,
    closed: &str,
) -> Result<Message, String> {
    match frames.next().await {
        Some(Ok(f)) => f.message().map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(closed.into()),
    }
}

impl Conn {
    /// Handles one request; false closes the connection.
    async fn handle(&self, rid: u32, msg: Message) -> bool {
        let cluster = &self.cluster;
        let tx = &self.answers;
        let store = cluster.store();
        if cluster.is_leaving() && is_forward(&msg) {
            return self.forward_on(rid, msg).await;
        }
        let answer = match msg {
            Message::Ping(n) => Message::Pong(n),
            Message::FwdRegister { session, instances } => {
                let floor = cluster.config.lease_floor_ms;
                if let Some(e) = instances.iter().find_map(|i| i.validate(floor).err()) {
                    Message::Error(ErrorBody::new(ErrorCode::InvalidArgument, e.to_string()))
                } else {
                    // A forward is applied here whoever owns the key by this node's view: it is
                    // never forwarded again; the next digest round settles any disagreement.
                    for i in &instances {
                        store.register(i, session);
                    }
                    Message::Ack(instances.len() as u32)
                }
            }
            Message::FwdDeregister(keys) => {
                Message::Ack(keys.iter().filter(|k| store.deregister(k)).count() as u32)
            }
            Message::FwdBeat(keys) => Message::BeatAck(store.beat_batch(&keys)),
            Message::FwdLapse { session, keys } => Message::Ack(
                keys.iter()
                    .filter(|k| store.lapse_session(k, session))
                    .count() as u32,
            ),
            Message::SyncBatch(records) => {
                super::stats::Stats::add(&cluster.stats.sync_frames_received, 1);
                cluster.apply_sync_batch(self.peer, &records);
                return true;
            }
            Message::Digest(d) => {
                cluster.on_digest(d);
                return true;
            }
            Message::Pull(p) => {
                let selection = Selection::Owned {
                    owner: p.owner,
                    buckets: p.buckets.iter().map(|&b| b as usize).collect(),
                };
                return self.stream_records(rid, selection).await;
            }
            Message::Leave(id) if id != self.peer => Message::Error(ErrorBody::new(
                ErrorCode::InvalidArgument,
                format!(
                    "Leave names node {id}; this connection authenticated as node {}",
                    self.peer
                ),
            )),
            Message::Leave(id) => {
                cluster.on_peer_leave(id).await;
                Message::Ack(0)
            }
            Message::SnapshotRequest => {
                if !cluster.ready.load(std::sync::atomic::Ordering::Acquire) {
                    // A node still loading holds only part of the data (nothing, after a
                    // restart): a peer that loaded it would turn ready with an empty or partial
                    // store.
                    let e = ErrorBody::new(ErrorCode::NotReady, "this node is still loading");
                    return tx
                        .send(encode_frame(rid, 0, &Message::Error(e)))
                        .await
                        .is_ok();
                }
                return self.stream_records(rid, Selection::All).await;
            }
            other => {
                let e = ErrorBody::new(
                    ErrorCode::NotAllowed,
                    format!("{:?} is not accepted on the peer port", other.opcode()),
                );
                let _ = tx.send(encode_frame(rid, 0, &Message::Error(e))).await;
                return false;
            }
        };
        tx.send(encode_frame(rid, 0, &answer)).await.is_ok()
    }

    /// A forward that reached this node while it leaves: its view leaves it out, so the writes
    /// go on to their owners there (who apply what is forwarded to them, whatever their view).
    /// The answer is the owners'; one that cannot be reached is answered Timeout, which the
    /// client's node passes on and the client retries.
    async fn forward_on(&self, rid: u32, msg: Message) -> bool {
        let cluster = &self.cluster;
        let failed = |e: super::ForwardError| {
            let code = match &e {
                super::ForwardError::Refused { error, .. } => {
                    error.kind().unwrap_or(ErrorCode::Internal)
                }
                super::ForwardError::Overloaded => ErrorCode::Overloaded,
                _ => ErrorCode::Timeout,
            };
            Message::Error(ErrorBody::new(code, e.to_string()))
        };
        let answer = match msg {
            Message::FwdRegister { session, instances } => {
                let floor = cluster.config.lease_floor_ms;
                match instances.iter().find_map(|i| i.validate(floor).err()) {
                    Some(e) => {
                        Message::Error(ErrorBody::new(ErrorCode::InvalidArgument, e.to_string()))
                    }
                    None => match cluster.register(&instances, session).await {
                        Ok(n) => Message::Ack(n),
                        Err(e) => failed(e),
                    },
                }
            }
            Message::FwdDeregister(keys) => match cluster.deregister(&keys).await {
                Ok(n) => Message::Ack(n),
                Err(e) => failed(e),
            },
            Message::FwdBeat(keys) => match cluster.beat(&keys).await {
                Ok(unknown) => Message::BeatAck(unknown),
                Err(e) => failed(e),
            },
            Message::FwdLapse { session, keys } => {
                let n = keys.len() as u32;
                cluster.lapse_session(session, keys).await;
                Message::Ack(n)
            }
            other => unreachable!("{:?} is no forward", other.opcode()),
        };
        self.answers
            .send(encode_frame(rid, 0, &answer))
            .await
            .is_ok()
    }

    /// Answers a Pull or a SnapshotRequest with the selected records, streamed from a task of
    /// its own (finding the records scans the store, and the forwards and sync batches behind
    /// the request on this connection should not wait for that), or with `Overloaded` when
    /// [`STREAMS_SERVED_MAX`] answers are being streamed already.
    async fn stream_records(&self, rid: u32, selection: Selection) -> bool {
        let Ok(slot) = self.cluster.serving.streams.clone().try_acquire_owned() else {
            super::stats::Stats::add(&self.cluster.stats.streams_refused, 1);
            let e = ErrorBody::new(
                ErrorCode::Overloaded,
                format!("{STREAMS_SERVED_MAX} pull or snapshot answers are being sent already"),
            );
            return self
                .answers
                .send(encode_frame(rid, 0, &Message::Error(e)))
                .await
                .is_ok();
        };
        let cluster = self.cluster.clone();
        let peer = self.peer;
        let out = StreamSender::new(self.answers.clone(), STREAM_WINDOW_FRAMES);
        let shutdown = self.shutdown.clone();
        self.cluster.tracker.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = send_records(&cluster, peer, rid, selection, out) => {}
            }
            drop(slot);
        });
        true
    }
}

fn is_forward(msg: &Message) -> bool {
    matches!(
        msg,
        Message::FwdRegister { .. }
            | Message::FwdDeregister(_)
            | Message::FwdBeat(_)
            | Message::FwdLapse { .. }
    )
}

/// Streams the selected records as Records frames of about [`RECORDS_FRAME_BYTES`], a chunk of
/// the store at a time (see [`crate::store::chunks`]).
async fn send_records(
    cluster: &Cluster,
    peer: u16,
    rid: u32,
    selection: Selection,
    mut out: StreamSender,
) -> Result<(), StreamClosed> {
    let mut walk = RecordChunks::new(selection);
    while let Some(chunk) = walk.next_chunk(cluster.store()) {
        for (count, bytes) in chunk.pieces(RECORDS_FRAME_BYTES) {
            let frame = records_frame_mut(Opcode::Records, rid, 0, count, &bytes);
            cluster
                .metrics
                .peer(peer)
                .pull_served_bytes
                .inc_by(frame.len() as u64);
            out.send(frame).await?;
        }
    }
    out.finish(|| records_frame_mut(Opcode::Records, rid, 0, 0, &[]))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::net::Dialer;
    use crate::node::Node;
    use crate::wire::{FLAG_MORE, Frame, NONCE_LEN, PROTOCOL_VERSION, PeerHello, PullMsg};
    use futures_util::future::BoxFuture;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    const TOKEN: &str = "test-token";

    struct NoDial;

    impl Dialer for NoDial {
        fn connect(&self, _: String) -> BoxFuture<'static, std::io::Result<BoxStream>> {
            Box::pin(async { Err(std::io::Error::other("this test dials nobody")) })
        }
    }

    fn member(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19_000 + i))
    }

    /// A node (member 1 of 3) serving one authenticated peer connection, whose far end (node 2)
    /// the test holds.
    async fn connected() -> (
        Arc<Node>,
        FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
        WriteHalf<DuplexStream>,
    ) {
        let config = Config {
            node_id: 1,
            members: vec![member(1).into(), member(2).into(), member(3).into()],
            peer_listen: member(1),
            cluster_token: Some(TOKEN.into()),
            ..Config::default()
        };
        let node = Node::with_dialer(config, Clock::starting_at(1_000_000), Arc::new(NoDial));
        node.set_ready(true);
        let cluster = node.cluster.clone().unwrap();
        let (near, far) = tokio::io::duplex(1 << 20);
        node.tracker.spawn(serve(
            cluster.clone(),
            Box::new(near),
            member(2),
            node.shutdown.clone(),
        ));
        let (rd, mut wr) = tokio::io::split(far);
        let mut frames = FramedRead::new(rd, FrameCodec::default());
        let nonce = [7; NONCE_LEN];
        let hello = PeerHello {
            node_id: 2,
            max_version: PROTOCOL_VERSION,
            cluster_hash: cluster.identity.cluster_hash,
            nonce,
        };
        wr.write_all(&encode_frame(0, 0, &Message::PeerHello(hello)))
            .await
            .unwrap();
        let Ok(Message::PeerChallenge(ch)) = next(&mut frames).await.message() else {
            panic!("no challenge")
        };
        let proof = auth::mac(TOKEN.as_bytes(), auth::DIALER_LABEL, &ch.nonce, &nonce, 2);
        wr.write_all(&encode_frame(0, 0, &Message::PeerAuth(proof)))
            .await
            .unwrap();
        assert_eq!(next(&mut frames).await.message().unwrap(), Message::Ack(0));
        (node, frames, wr)
    }

    async fn next(frames: &mut FramedRead<ReadHalf<DuplexStream>, FrameCodec>) -> Frame {
        frames.next().await.unwrap().unwrap()
    }

    fn pull(rid: u32) -> Bytes {
        let p = PullMsg {
            owner: 1,
            buckets: (0..crate::model::DIGEST_BUCKETS as u16).collect(),
        };
        encode_frame(rid, 0, &Message::Pull(p))
    }

    #[tokio::test]
    async fn streams_beyond_the_cap_are_refused_as_overloaded_and_counted() {
        let (node, mut frames, mut wr) = connected().await;
        let cluster = node.cluster.clone().unwrap();
        let taken = cluster
            .serving
            .streams
            .clone()
            .try_acquire_many_owned(STREAMS_SERVED_MAX as u32)
            .unwrap();
        wr.write_all(&pull(5)).await.unwrap();
        let f = next(&mut frames).await;
        match f.message().unwrap() {
            Message::Error(e) => {
                assert_eq!((f.request_id, e.kind()), (5, Some(ErrorCode::Overloaded)))
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
        assert_eq!(cluster.stats.snapshot().streams_refused, 1);
        // A slot frees: the next pull is answered (an empty store: one empty Records frame).
        drop(taken);
        wr.write_all(&pull(6)).await.unwrap();
        let f = next(&mut frames).await;
        assert_eq!((f.request_id, f.flags), (6, 0));
        assert_eq!(f.message().unwrap(), Message::Records(vec![]));
        node.shutdown.cancel();
        node.tracker.close();
        node.tracker.wait().await;
    }

    #[tokio::test]
    async fn a_snapshot_is_streamed_in_frames_linked_by_more() {
        let (node, mut frames, mut wr) = connected().await;
        // About 3 MiB of records: several chunks and frames.
        for i in 0..3000u32 {
            let key = crate::model::InstanceKey {
                service: crate::model::ServiceName::new("public", "g", &format!("s{}", i % 50)),
                cluster: crate::model::Text::from_static("DEFAULT"),
                ip: format!("10.0.{}.{}", i >> 8, i & 255).into(),
                port: 80,
            };
            let mut inst = crate::model::Instance::new(key);
            inst.metadata = vec![("k".into(), "v".repeat(1000).into())];
            node.store.register(&inst, 0);
        }
        wr.write_all(&encode_frame(9, 0, &Message::SnapshotRequest))
            .await
            .unwrap();
        let mut records = 0;
        let mut frames_seen = 0;
        loop {
            let f = next(&mut frames).await;
            assert_eq!(f.request_id, 9);
            assert!(f.body.len() <= RECORDS_FRAME_BYTES + 4096, "frames are cut");
            let Message::Records(r) = f.message().unwrap() else {
                panic!()
            };
            records += r.len();
            frames_seen += 1;
            if f.flags & FLAG_MORE == 0 {
                break;
            }
        }
        assert_eq!(records, 3000);
        assert!(frames_seen >= 3, "{frames_seen} frames");
        // The permit went back when the stream ended.
        let cluster = node.cluster.clone().unwrap();
        for _ in 0..100 {
            if cluster.serving.streams.available_permits() == STREAMS_SERVED_MAX {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            cluster.serving.streams.available_permits(),
            STREAMS_SERVED_MAX
        );
        node.shutdown.cancel();
        node.tracker.close();
        node.tracker.wait().await;
    }

    #[tokio::test]
    async fn a_leave_is_acknowledged_only_for_the_peer_that_sends_it() {
        let (node, mut frames, mut wr) = connected().await;
        // (request id, Leave naming, the answer's error code; None: Ack(0))
        let table = [
            (30, 3, Some(ErrorCode::InvalidArgument)),
            (31, 0, Some(ErrorCode::InvalidArgument)),
            (32, 2, None),
            // Again (a retry): the same answer.
            (33, 2, None),
        ];
        for (rid, id, want) in table {
            wr.write_all(&encode_frame(rid, 0, &Message::Leave(id)))
                .await
                .unwrap();
            let f = next(&mut frames).await;
            assert_eq!(f.request_id, rid);
            match (f.message().unwrap(), want) {
                (Message::Ack(0), None) => {}
                (Message::Error(e), Some(code)) => assert_eq!(e.kind(), Some(code), "Leave({id})"),
                (other, _) => panic!("Leave({id}) answered {other:?}"),
            }
        }
        node.shutdown.cancel();
        node.tracker.close();
        node.tracker.wait().await;
    }

    #[tokio::test]
    async fn a_leaving_node_lets_no_new_peer_in() {
        let (node, _frames, _wr) = connected().await;
        let cluster = node.cluster.clone().unwrap();
        cluster.leave().await;
        let (near, far) = tokio::io::duplex(1 << 16);
        node.tracker.spawn(serve(
            cluster.clone(),
            Box::new(near),
            member(3),
            node.shutdown.clone(),
        ));
        let (rd, mut wr) = tokio::io::split(far);
        let mut frames = FramedRead::new(rd, FrameCodec::default());
        let nonce = [9; NONCE_LEN];
        let hello = PeerHello {
            node_id: 3,
            max_version: PROTOCOL_VERSION,
            cluster_hash: cluster.identity.cluster_hash,
            nonce,
        };
        wr.write_all(&encode_frame(0, 0, &Message::PeerHello(hello)))
            .await
            .unwrap();
        let Ok(Message::PeerChallenge(ch)) = next(&mut frames).await.message() else {
            panic!("no challenge")
        };
        let proof = auth::mac(TOKEN.as_bytes(), auth::DIALER_LABEL, &ch.nonce, &nonce, 3);
        wr.write_all(&encode_frame(0, 0, &Message::PeerAuth(proof)))
            .await
            .unwrap();
        // A good proof, but the node is leaving: no Ack, ShuttingDown, and the connection ends.
        match next(&mut frames).await.message().unwrap() {
            Message::Error(e) => assert_eq!(e.kind(), Some(ErrorCode::ShuttingDown)),
            other => panic!("a leaving node answered a good proof with {other:?}"),
        }
        assert!(frames.next().await.is_none(), "the connection ends");
        node.shutdown.cancel();
        node.tracker.close();
        node.tracker.wait().await;
    }
}
