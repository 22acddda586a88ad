//! An authenticated outbound connection to one peer: requests with deadlines matched to their
//! answers by request id, streamed answers (FLAG_MORE), and fire-and-forget frames (request id
//! 0) such as sync batches and digests, whose bytes are encoded once for all peers.
//!
//! A link never blocks its callers on a slow peer beyond their deadline: the outbox is bounded
//! and `send_raw` refuses when it is full (the caller counts the drop; anti-entropy repairs it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::hash::HashMap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Identity};
use super::engine::handshake::{Dialing, HandshakeError};
use crate::net::{Dialer, StreamReader, StreamWriter};
use crate::wire::{
    ErrorBody, FLAG_MORE, FRAME_LEN_MAX, FrameCodec, Message, WireError, encode_frame,
    encode_frame_into,
};

/// Frames queued for one peer link. Sync batches are up to ~1 MiB, so this bounds a link's
/// queued memory to a few hundred MiB in the worst case and far less in practice.
pub const LINK_OUTBOX_FRAMES: usize = 256;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{what} to peer timed out")]
    Timeout { what: &'static str },
    #[error("peer link closed")]
    Closed,
    #[error("peer {addr} failed authentication: {reason}")]
    Unauthorized { addr: SocketAddr, reason: String },
    #[error("peer answered with an error: {}", .0.message)]
    Remote(ErrorBody),
    #[error("peer sent an unexpected message: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

enum Waiter {
    One(oneshot::Sender<Message>),
    /// Gets every frame of a streamed answer; dropped after the frame without FLAG_MORE.
    Stream(mpsc::Sender<Message>),
}

type Pending = Arc<std::sync::Mutex<HashMap<u32, Waiter>>>;

pub struct Link {
    /// The peer's node id, learned in the handshake.
    pub peer_id: u16,
    pub addr: SocketAddr,
    outbox: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU32,
    pub closed: CancellationToken,
    /// When the link was opened, and how long after that it last received a frame (ms).
    opened: tokio::time::Instant,
    last_rx_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    /// How long since this link last received a frame (or was opened).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Connects, authenticates, and starts the link's reader and writer.
    pub async fn dial(
        dialer: &dyn Dialer,
        addr: SocketAddr,
        me: &Identity,
        timeout: Duration,
    ) -> Result<Arc<Link>, PeerError> {
        let fut = async {
            let stream =
                dialer
                    .connect(addr.to_string())
                    .await
                    .map_err(|e| PeerError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?;
            let (rd, mut wr) = crate::net::split(stream);
            let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
            let handshake = Dialing::new(me, auth::nonce());
            let refused = |e| refused(addr, e);
            wr.write_all(&encode_frame(0, 0, &handshake.hello()))
                .await
                .map_err(|_| PeerError::Closed)?;
            let challenge = next_message(&mut frames).await?;
            let (peer_id, proof) = handshake.on_challenge(challenge).map_err(refused)?;
            wr.write_all(&encode_frame(0, 0, &proof))
                .await
                .map_err(|_| PeerError::Closed)?;
            handshake
                .on_answer(next_message(&mut frames).await?)
                .map_err(refused)?;
            Ok::<_, PeerError>((frames, wr, peer_id))
        };
        let (frames, wr, peer_id) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PeerError::Timeout { what: "handshake" })??;
        Ok(Link::start(addr, peer_id, frames, wr))
    }

    fn start(
        addr: SocketAddr,
        peer_id: u16,
        mut frames: FramedRead<StreamReader, FrameCodec>,
        wr: StreamWriter,
    ) -> Arc<Link> {
        let (tx, rx) = mpsc::channel::<Bytes>(LINK_OUTBOX_FRAMES);
        let pending: Pending = Default::default();
        let closed = CancellationToken::new();
        tokio::spawn(crate::net::write_frames(wr, rx, 1 << 20, closed.clone()));
        let opened = tokio::time::Instant::now();
        let last_rx_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (ropened, rlast) = (opened, last_rx_ms.clone());
        let rpending = pending.clone();
        let rclosed = closed.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = rclosed.cancelled() => break,
                    n = frames.next() => n,
                };
                let Some(Ok(frame)) = next else { break };
                rlast.store(ropened.elapsed().as_millis() as u64, Ordering::Relaxed);
                let Ok(msg) = frame.message() else { break };
                let more = frame.flags & FLAG_MORE != 0;
                let waiter = rpending.lock().unwrap().remove(&frame.request_id);
                match waiter {
                    Some(Waiter::One(tx)) => {
                        let _ = tx.send(msg);
                    }
                    // A full stream channel means the consumer is slow: the reader waits rather
                    // than buffering without bound. After the last frame the sender is dropped,
                    // which ends the consumer's stream.
                    Some(Waiter::Stream(tx)) if tx.send(msg).await.is_ok() && more => {
                        rpending
                            .lock()
                            .unwrap()
                            .insert(frame.request_id, Waiter::Stream(tx));
                    }
                    Some(Waiter::Stream(_)) | None => {}
                }
            }
            rclosed.cancel();
            rpending.lock().unwrap().clear();
        });
        Arc::new(Link {
            peer_id,
            addr,
            outbox: tx,
            pending,
            next_id: AtomicU32::new(1),
            closed,
            opened,
            last_rx_ms,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Queues a pre-encoded frame that expects no answer. False when the link is closed or its
    /// outbox is full.
    pub fn send_raw(&self, frame: Bytes) -> bool {
        !self.is_closed() && self.outbox.try_send(frame).is_ok()
    }

    fn next_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    async fn enqueue(
        &self,
        id: u32,
        msg: &Message,
        waiter: Waiter,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        if self.is_closed() {
            return Err(PeerError::Closed);
        }
        self.pending.lock().unwrap().insert(id, waiter);
        let mut frame = BytesMut::new();
        encode_frame_into(&mut frame, id, 0, msg);
        match tokio::time::timeout(timeout, self.outbox.send(frame.freeze())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.pending.lock().unwrap().remove(&id);
                Err(PeerError::Closed)
            }
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(PeerError::Timeout { what: "send" })
            }
        }
    }

    /// One request, one answer, within `timeout`. A timeout closes the link: a peer that does
    /// not answer in time is treated as a wedged connection and redialed.
    pub async fn call(&self, msg: &Message, timeout: Duration) -> Result<Message, PeerError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.enqueue(id, msg, Waiter::One(tx), timeout).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Message::Error(e))) => Err(PeerError::Remote(e)),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(PeerError::Closed),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                self.close();
                Err(PeerError::Timeout { what: "request" })
            }
        }
    }

    /// A request whose answer is streamed over several frames. The receiver yields each frame;
    /// it ends after the last one (or when the link closes).
    pub async fn call_stream(
        &self,
        msg: &Message,
        timeout: Duration,
    ) -> Result<mpsc::Receiver<Message>, PeerError> {
        let id = self.next_id();
        let (tx, rx) = mpsc::channel(8);
        self.enqueue(id, msg, Waiter::Stream(tx), timeout).await?;
        Ok(rx)
    }
}

/// The dialer's handshake failed: the peer refused or could not prove itself.
fn refused(addr: SocketAddr, e: HandshakeError) -> PeerError {
    match e {
        HandshakeError::Unexpected { got, .. } => PeerError::Unexpected(format!("{got:?}")),
        other => PeerError::Unauthorized {
            addr,
            reason: other.to_string(),
        },
    }
}

async fn next_message(
    frames: &mut FramedRead<StreamReader, FrameCodec>,
) -> Result<Message, PeerError> {
    match frames.next().await {
        Some(Ok(f)) => Ok(f.message()?),
        Some(Err(e)) => Err(e.into()),
        None => Err(PeerError::Closed),
    }
}
