//! An authenticated outbound connection to one peer: the handshake, then the connection layer's
//! multiplexer ([`crate::net::mux`]) — requests with deadlines matched to their answers by
//! request id, streamed answers (FLAG_MORE), and fire-and-forget frames (request id 0) such as
//! sync batches and digests, whose bytes are encoded once for all peers.
//!
//! A link never blocks its callers on a slow peer beyond their deadline: the outbox is bounded
//! and `send_raw` refuses when it is full (the caller counts the drop; anti-entropy repairs it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, Identity};
use super::engine::handshake::{Dialing, HandshakeError};
use crate::config::PeerAddr;
use crate::net::{Dialer, Mux, MuxConfig, MuxError, StreamReader, StreamedAnswer};
use crate::wire::{ErrorBody, FRAME_LEN_MAX, FrameCodec, Message, WireError, encode_frame};

/// Frames queued for one peer link. Sync batches are up to ~1 MiB, so this bounds a link's
/// queued memory to a few hundred MiB in the worst case and far less in practice.
pub const LINK_OUTBOX_FRAMES: usize = 256;
/// Requests awaiting answers on one link. Forwards, nearly all of them, are capped node-wide at
/// [`super::FORWARDS_IN_FLIGHT_MAX`]; the rest (pings, one pull, a snapshot request) are a
/// handful. So the cap never decides in a working node; it bounds the table if that changes.
pub const LINK_PENDING_MAX: usize = 2 * super::FORWARDS_IN_FLIGHT_MAX;
/// Frames of one streamed answer (a pull's, a snapshot's) received and not yet applied; beyond
/// it the link's reader waits for the consumer (about 1 MiB each).
const LINK_STREAM_FRAMES: usize = 8;
/// One write to a peer gathers up to this much (a sync batch and the forwards behind it).
const LINK_WRITE_BATCH_BYTES: usize = 1 << 20;

const MUX: MuxConfig = MuxConfig {
    pending_max: LINK_PENDING_MAX,
    outbox_frames: LINK_OUTBOX_FRAMES,
    write_batch_bytes: LINK_WRITE_BATCH_BYTES,
    stream_frames: LINK_STREAM_FRAMES,
};

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: PeerAddr, reason: String },
    #[error("{what} to peer timed out")]
    Timeout { what: &'static str },
    #[error("peer link closed")]
    Closed,
    #[error("peer {addr} failed authentication: {reason}")]
    Unauthorized { addr: PeerAddr, reason: String },
    #[error("peer answered with an error: {}", .0.message)]
    Remote(ErrorBody),
    #[error("peer sent an unexpected message: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A request breaks a limit of the wire (a bug: the cluster sends only what it decoded or
    /// validated); nothing was sent.
    #[error("request not sent: {0}")]
    Unencodable(String),
}

/// An authenticated connection to one peer, multiplexed ([`crate::net::mux`]).
pub struct Link {
    /// The peer's node id, learned in the handshake.
    pub peer_id: u16,
    pub addr: PeerAddr,
    mux: Arc<Mux>,
}

impl Link {
    /// How long since this link last received a frame (or was opened).
    pub fn idle_for(&self) -> Duration {
        self.mux.idle_for()
    }

    /// Connects, authenticates, and starts the link's reader and writer.
    /// Its reader and writer run in `tasks`.
    pub async fn dial(
        dialer: &dyn Dialer,
        addr: &PeerAddr,
        me: &Identity,
        timeout: Duration,
        tasks: &TaskTracker,
    ) -> Result<Arc<Link>, PeerError> {
        let fut = async {
            let stream =
                dialer
                    .connect(addr.to_string())
                    .await
                    .map_err(|e| PeerError::Connect {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
            let (rd, mut wr) = crate::net::split(stream);
            let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
            let handshake = Dialing::new(me, auth::nonce());
            let refused = |e| refused(addr.clone(), e);
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
        let mux = Mux::start(frames, wr, MUX, CancellationToken::new(), tasks, |_| {});
        Ok(Arc::new(Link {
            peer_id,
            addr: addr.clone(),
            mux,
        }))
    }

    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    pub fn close(&self) {
        self.mux.close();
    }

    /// Queues a pre-encoded frame that expects no answer. False when the link is closed or its
    /// outbox is full.
    pub fn send_raw(&self, frame: Bytes) -> bool {
        self.mux.send(frame)
    }

    /// One request, one answer, within `timeout`. A timeout closes the link: a peer that does
    /// not answer in time is treated as a wedged connection and redialed.
    pub async fn call(&self, msg: &Message, timeout: Duration) -> Result<Message, PeerError> {
        match self.mux.call(msg, timeout).await {
            Ok(Message::Error(e)) => Err(PeerError::Remote(e)),
            Ok(m) => Ok(m),
            Err(MuxError::AnswerTimeout) => {
                self.close();
                Err(PeerError::Timeout { what: "request" })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A request whose answer is streamed over several frames. The answer yields each frame;
    /// it ends after the last one (or when the link closes).
    pub async fn call_stream(
        &self,
        msg: &Message,
        timeout: Duration,
    ) -> Result<StreamedAnswer, PeerError> {
        Ok(self.mux.call_stream(msg, timeout).await?)
    }
}

impl super::Cluster {
    /// Dials a link to the member at `addr`; its tasks run in the node's tracker.
    pub(super) async fn dial_link(
        &self,
        addr: &PeerAddr,
        timeout: Duration,
    ) -> Result<Arc<Link>, PeerError> {
        Link::dial(&*self.dialer, addr, &self.identity, timeout, &self.tracker).await
    }
}

impl From<MuxError> for PeerError {
    fn from(e: MuxError) -> PeerError {
        match e {
            MuxError::Closed => PeerError::Closed,
            MuxError::SendTimeout => PeerError::Timeout { what: "send" },
            MuxError::AnswerTimeout => PeerError::Timeout { what: "request" },
            MuxError::Unencodable { reason } => PeerError::Unencodable(reason),
        }
    }
}

/// The dialer's handshake failed: the peer refused or could not prove itself.
fn refused(addr: PeerAddr, e: HandshakeError) -> PeerError {
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
