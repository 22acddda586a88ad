//! The peer port: authenticates each connection, then serves what the dialing peer sends —
//! pings, forwarded writes, sync batches, digests, pulls and snapshot requests.
//!
//! A frame that cannot be decoded, or a client opcode, closes the connection with an Error
//! frame; nothing of it is applied.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth;
use super::engine::handshake::Acceptor;
use super::{Cluster, RECORDS_FRAME_BYTES};
use crate::net::{BoxStream, Listener, StreamReader, StreamWriter};
use crate::store::digest::BucketSet;
use crate::wire::{ErrorBody, ErrorCode, FRAME_LEN_MAX, FrameCodec, Message, encode_frame};

/// Deadline of the whole handshake of an incoming peer connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers queued for one peer connection; a full queue stops reading from that peer.
const ANSWER_QUEUE_MAX: usize = 256;
/// Peer connections at once. A cluster needs two per member; the rest is slack for redials.
pub const PEER_CONNECTIONS_MAX: usize = 1024;
/// A peer connection silent this long is dropped (peers ping several times a second).
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn accept_loop(
    cluster: Arc<Cluster>,
    listener: Box<dyn Listener>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PEER_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let c = cluster.clone();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    serve(c, stream, peer, s).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
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
            Ok(Err(reason)) => {
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
    // Never cancelled from outside: it ends when the answers channel closes and is drained.
    let writer = tokio::spawn(crate::net::write_frames(
        wr,
        rx,
        1 << 20,
        CancellationToken::new(),
    ));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = tokio::time::timeout(PEER_IDLE_TIMEOUT, frames.next()) => n,
        };
        let frame = match next {
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(e))) => {
                info!(%peer, error = %e, "closing peer connection on a bad frame");
                let _ = tx
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
                let _ = tx
                    .send(encode_frame(
                        rid,
                        0,
                        &Message::Error(ErrorBody::new(e.code(), e.to_string())),
                    ))
                    .await;
                break;
            }
        };
        if !handle(&cluster, rid, msg, &tx).await {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    debug!(%peer, "peer disconnected");
}

/// Acceptor side of the handshake (the checks are [`Acceptor`]'s); answers the peer's id.
async fn handshake(
    cluster: &Cluster,
    frames: &mut FramedRead<StreamReader, FrameCodec>,
    wr: &mut StreamWriter,
) -> Result<u16, String> {
    let mut acceptor = Acceptor::new(&cluster.identity, auth::nonce());
    let hello = next_message(frames, "closed before the handshake").await?;
    let challenge = acceptor.on_hello(hello).map_err(|e| e.to_string())?;
    wr.write_all(&encode_frame(0, 0, &challenge))
        .await
        .map_err(|e| e.to_string())?;
    let proof = next_message(frames, "closed during the handshake").await?;
    let peer_id = acceptor.on_auth(proof).map_err(|e| e.to_string())?;
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

/// Handles one request; false closes the connection.
async fn handle(cluster: &Arc<Cluster>, rid: u32, msg: Message, tx: &mpsc::Sender<Bytes>) -> bool {
    let store = cluster.store();
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
            cluster.apply_records(&records);
            return true;
        }
        Message::Digest(d) => {
            cluster.on_digest(d);
            return true;
        }
        Message::Pull(p) => {
            // Answered from its own task: finding a bucket's records scans the store, and the
            // forwards and sync batches behind it on this link should not wait for that.
            let c = cluster.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let set: BucketSet = p.buckets.iter().map(|&b| b as usize).collect();
                let batch = c.store().records_in_buckets(p.owner, &set);
                let frames = Cluster::records_frames(rid, batch.pieces(RECORDS_FRAME_BYTES));
                send_all(&tx, frames).await;
            });
            return true;
        }
        Message::SnapshotRequest => {
            if !cluster.ready.load(std::sync::atomic::Ordering::Acquire) {
                // A node still loading holds only part of the data (nothing, after a restart):
                // a peer that loaded it would turn ready with an empty or partial store.
                let e = ErrorBody::new(ErrorCode::NotReady, "this node is still loading");
                return tx
                    .send(encode_frame(rid, 0, &Message::Error(e)))
                    .await
                    .is_ok();
            }
            let c = cluster.clone();
            let tx = tx.clone();
            // Streamed from its own task so the connection keeps serving (and the receiver's
            // pace bounds how much is buffered: the answer queue is bounded).
            tokio::spawn(async move {
                let shards = crate::store::SHARDS;
                for shard in 0..shards {
                    let batch = c.store().encode_shard(shard);
                    let mut pieces = batch.pieces(RECORDS_FRAME_BYTES);
                    if shard + 1 < shards {
                        // Every frame but the very last carries FLAG_MORE.
                        let frames: Vec<Bytes> = pieces
                            .drain(..)
                            .map(|(n, b)| {
                                super::sync::records_frame(
                                    crate::wire::Opcode::Records,
                                    rid,
                                    crate::wire::FLAG_MORE,
                                    n,
                                    &b,
                                )
                            })
                            .collect();
                        if !send_all(&tx, frames).await {
                            return;
                        }
                    } else if !send_all(&tx, Cluster::records_frames(rid, pieces)).await {
                        return;
                    }
                }
            });
            return true;
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

async fn send_all(tx: &mpsc::Sender<Bytes>, frames: Vec<Bytes>) -> bool {
    for f in frames {
        if tx.send(f).await.is_err() {
            return false;
        }
    }
    true
}
