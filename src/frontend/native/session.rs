//! One client connection: a reader that decodes frames in order and turns each into a call of
//! the request API, and the connection layer's writer ([`crate::net::writer`]) that batches
//! answers and pushes onto the socket (the pushes are its [`Extra`] output).
//!
//! Requests are pipelined: the client may send many before reading answers; each answer carries
//! its request's id. A frame that cannot be decoded is answered with an Error frame and the
//! connection is closed (the stream can no longer be trusted); nothing of it reaches the store.
//! A request that decodes but is not acceptable (a lease below the floor, a message only a node
//! sends) gets an Error frame with its own request id and the connection stays open.
//!
//! Fair share ([`crate::frontend::share`]): the reader takes a request slot before it reads each
//! frame and every answer takes its bytes of the connection's queue budget, so a client that
//! pipelines without reading its answers is held back by TCP once it has
//! `REQUESTS_IN_FLIGHT_MAX` requests unanswered or `QUEUED_BYTES_MAX` bytes of answers waiting.
//! After each frame the reader spends a unit of tokio's cooperative budget, so a connection with
//! a buffer full of frames yields to other connections' tasks now and then.
//!
//! On a node with a token file the client presents its token in an Auth frame; the session
//! keeps the caller it stands for, and the request API checks every request against it. A
//! connection refused for want of a valid token `AUTH_FAILURES_MAX` times, or whose token a
//! reload withdrew, is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::error::error_body;
use crate::api::PushQueue;
use crate::api::{AUTH_FAILURES_MAX, Api, Push, Rejection, Session, Write};
use crate::frontend::share::{QUEUED_BYTES_MAX, Queued, RequestSlot, Share};
use crate::model::BATCH_INSTANCES_MAX;
use crate::net::{BoxStream, Extra, WriterConfig};
use crate::wire::{
    ErrorBody, ErrorCode, FRAME_LEN_MAX, Frame, FrameCodec, HelloOk, Message, Opcode,
    PROTOCOL_VERSION, WireError, encode_frame, try_encode_raw_frame_into,
};

/// Answers queued for the writer (besides their bytes, which the connection's share caps). When
/// full the reader stops reading: a client that sends faster than it reads is slowed down, not
/// buffered without bound.
const ANSWER_QUEUE_MAX: usize = 1024;
/// Each queued answer counts at least this many bytes of the connection's share (a small
/// answer's allocation and bookkeeping cost more than its bytes), so that the share's bytes
/// bound the answers queued too: a queue of small answers fills its budget at
/// [`ANSWER_QUEUE_MAX`], the channel's capacity, and the connection is counted as held back.
const ANSWER_COST_MIN_BYTES: usize = QUEUED_BYTES_MAX / ANSWER_QUEUE_MAX;
/// The writer gathers answers up to this many bytes into one socket write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A client that does not read what it is sent for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pushes one wake of a connection's writer sends add up to at most this many bytes (and
/// at least one push); services left over stay marked for its next wake. Bounds the buffer one
/// connection's pushes can take (a subscriber of thousands of large services, all owed whole
/// lists after a resubscribe, would otherwise be handed all of them in one buffer) and lets
/// answers to its requests go out between the pushes. The size of a gathered answer write.
const PUSH_BYTES_PER_WAKE: usize = 256 << 10;

enum Flow {
    Continue,
    Close,
}

struct Conn {
    api: Api,
    session: Session,
    peer: SocketAddr,
    answers: Answers,
}

/// Where a connection's answers go: its writer's queue, within the connection's share.
#[derive(Clone)]
struct Answers {
    tx: mpsc::Sender<Queued<Bytes>>,
    share: Arc<Share>,
}

impl Answers {
    /// Queues `frame` once the connection's budget of bytes has room; false if the writer has
    /// ended (the connection is closing).
    async fn send(&self, frame: Bytes) -> bool {
        let cost = frame.len().max(ANSWER_COST_MIN_BYTES);
        let queued = self.share.queue(frame, cost).await;
        self.tx.send(queued).await.is_ok()
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Serves one client connection until it closes, fails, idles out or the node shuts down.
pub async fn serve(api: Api, stream: BoxStream, peer: SocketAddr) {
    let node = api.node().clone();
    let _open = node.metrics.client_connection();
    let (rd, wr) = crate::net::split(stream);
    let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
    let (tx, rx) = mpsc::channel(ANSWER_QUEUE_MAX);
    let share = Share::new(node.metrics.clone());
    let session = api.open_session();
    let pushes = Pushes {
        queue: session.push_queue().clone(),
        api: api.clone(),
        delay: Duration::from_millis(node.config.push_delay_ms),
    };
    // Never stopped from here: the writer ends once the answers channel is closed and drained
    // (the last answer, a ShuttingDown error, goes out), or a write fails.
    let writer_config = WriterConfig {
        batch_bytes: WRITE_BATCH_BYTES,
        write_timeout: Some(WRITE_TIMEOUT),
    };
    let writer = node.tracker.spawn(crate::net::writer::run(
        wr,
        rx,
        writer_config,
        CancellationToken::new(),
        pushes,
    ));
    let mut c = Conn {
        api,
        session,
        peer,
        answers: Answers { tx, share },
    };
    debug!(%peer, session = c.session.id(), "client connected");
    let idle = Duration::from_millis(node.config.client_idle_timeout_ms);
    let mut node_closing = false;
    // The node's shutdown as this connection's Api watches it (its own child token: checking it
    // for every frame locks this connection's token, not the one every connection shares).
    let stopping = c.api.stopping().clone().cancelled_owned();
    tokio::pin!(stopping);
    loop {
        // The next frame is read only once the connection has a request slot free.
        let slot = match c.answers.share.try_request_slot() {
            Some(s) => Some(s),
            None => tokio::select! {
                _ = &mut stopping => None,
                s = c.answers.share.request_slot() => Some(s),
            },
        };
        let next = match slot {
            None => None,
            Some(slot) => tokio::select! {
                _ = &mut stopping => None,
                n = tokio::time::timeout(idle, frames.next()) => Some((slot, n)),
            },
        };
        let Some((slot, next)) = next else {
            node_closing = true;
            c.send_error(0, error_body(&Rejection::ShuttingDown)).await;
            break;
        };
        match next {
            Err(_) => {
                info!(%peer, session = c.session.id(), "client idle past the timeout; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                c.reject_stream(0, &e).await;
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Flow::Close = c.handle(frame, slot).await {
                    break;
                }
                // A client whose frames are all buffered already never makes the reader wait
                // on its socket: yield to other connections' tasks when this task has used its
                // share of the scheduler's budget.
                tokio::task::consume_budget().await;
            }
        }
    }
    let lapsed = c.session.close(node_closing).await;
    if lapsed > 0 {
        info!(%peer, instances = lapsed, "session dropped; instances marked unhealthy");
    }
    drop(c);
    if let Ok(crate::net::writer::WriterEnd::TimedOut) = writer.await {
        // The client stopped reading what it was sent (answers and pushes) for the write
        // timeout: it is dropped rather than buffered for.
        node.metrics.subscribers_dropped_lag.inc();
    }
    debug!(%peer, "client disconnected");
}

impl Conn {
    async fn send(&self, request_id: u32, msg: &Message) -> Flow {
        if self.answers.send(encode_frame(request_id, 0, msg)).await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    async fn send_error(&self, request_id: u32, e: ErrorBody) -> Flow {
        self.send(request_id, &Message::Error(e)).await
    }

    /// Answers `rid` with `answer`'s message, or with the Error frame of its rejection.
    async fn answer(&self, rid: u32, answer: Result<Message, Rejection>) -> Flow {
        match answer {
            Ok(m) => self.send(rid, &m).await,
            Err(r) => self.send_error(rid, error_body(&r)).await,
        }
    }

    /// The bytes of the stream are not a valid frame: say why, then close.
    async fn reject_stream(&self, request_id: u32, e: &WireError) {
        info!(peer = %self.peer, error = %e, "closing client connection on a bad frame");
        self.send_error(request_id, ErrorBody::new(e.code(), e.to_string()))
            .await;
    }

    /// Handles one frame; `slot` is held until its answer is queued (by a pending write, in the
    /// write's own task).
    async fn handle(&mut self, frame: Frame, slot: RequestSlot) -> Flow {
        if self.session.is_revoked() {
            info!(peer = %self.peer, "closing client connection: its token was withdrawn");
            self.send_error(0, error_body(&Rejection::Unauthenticated))
                .await;
            return Flow::Close;
        }
        let flow = self.dispatch(frame, slot).await;
        if self.session.auth_failures_exhausted() {
            info!(
                peer = %self.peer,
                failures = AUTH_FAILURES_MAX,
                "closing client connection after repeated authentication failures"
            );
            return Flow::Close;
        }
        flow
    }

    async fn dispatch(&mut self, frame: Frame, slot: RequestSlot) -> Flow {
        let rid = frame.request_id;
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                self.reject_stream(rid, &e).await;
                return Flow::Close;
            }
        };
        if rid == 0 {
            // Id 0 marks frames that answer no request; an answer to this one could not be told
            // from a connection-level error, so the client is told so at that level.
            info!(peer = %self.peer, "closing client connection on a request with id 0");
            let e = ErrorBody::new(
                ErrorCode::NotAllowed,
                "request id 0 is reserved for pushes and connection-level errors",
            );
            self.send_error(0, e).await;
            return Flow::Close;
        }
        match msg {
            Message::Hello(h) => {
                if h.max_version < PROTOCOL_VERSION {
                    let e = ErrorBody::new(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "client speaks up to version {}, node speaks {PROTOCOL_VERSION}",
                            h.max_version
                        ),
                    );
                    return self.send_error(rid, e).await;
                }
                let ok = HelloOk {
                    version: PROTOCOL_VERSION,
                    node_id: self.api.node_id(),
                    ready: self.api.is_ready(),
                    frame_len_max: FRAME_LEN_MAX as u32,
                    batch_instances_max: BATCH_INSTANCES_MAX as u16,
                    lease_floor_ms: self.api.lease_floor_ms(),
                };
                self.send(rid, &Message::HelloOk(ok)).await
            }
            Message::Ping(n) => self.send(rid, &Message::Pong(n)).await,
            Message::Auth(token) => {
                let r = self.session.authenticate(token.as_str());
                self.answer(rid, r.map(|()| Message::Ack(1))).await
            }
            Message::Register(reg) => {
                let w = self
                    .session
                    .register(reg.instances, reg.session_bound)
                    .await;
                self.write(rid, w, Message::Ack, slot).await
            }
            Message::Deregister(keys) => {
                let w = self.session.deregister(keys).await;
                self.write(rid, w, Message::Ack, slot).await
            }
            Message::Beat(keys) => {
                let w = self.session.beat(keys).await;
                self.write(rid, w, Message::BeatAck, slot).await
            }
            Message::Query(q) => match self.session.query(&q.name, &q.cluster, q.healthy_only) {
                Ok(snap) => self.send_body(rid, Opcode::QueryResult, snap.body()).await,
                Err(r) => self.send_error(rid, error_body(&r)).await,
            },
            Message::ListServices(l) => {
                let list = self
                    .session
                    .list_services(&l.namespace, l.page, l.page_size);
                self.answer(rid, list.map(Message::ServiceList)).await
            }
            Message::Subscribe(name) => {
                let r = self.session.subscribe(&name).map(|()| Message::Ack(1));
                self.answer(rid, r).await
            }
            Message::Unsubscribe(name) => {
                let r = self
                    .session
                    .unsubscribe(&name)
                    .map(|was| Message::Ack(was as u32));
                self.answer(rid, r).await
            }
            Message::ClusterStatus => {
                let status = self.session.cluster_status();
                self.answer(rid, status.map(Message::ClusterStatusResult))
                    .await
            }
            Message::Owner { ip, port } => {
                let owner = self.session.owner(&ip, port);
                self.answer(rid, owner.map(Message::OwnerResult)).await
            }
            other => {
                let e = ErrorBody::new(
                    ErrorCode::NotAllowed,
                    format!("{:?} is not a request a node accepts", other.opcode()),
                );
                self.send_error(rid, e).await
            }
        }
    }

    /// Answers a write: at once when it is done; otherwise it runs in its own task (it may wait
    /// on owners in the cluster) and answers when it completes, while this connection goes on
    /// reading. The task holds the request's `slot` until its answer is queued.
    async fn write<T: Send + 'static>(
        &self,
        rid: u32,
        w: Write<T>,
        to_msg: fn(T) -> Message,
        slot: RequestSlot,
    ) -> Flow {
        match w {
            Write::Done(r) => self.answer(rid, r.map(to_msg)).await,
            Write::Pending(pending) => {
                let answers = self.answers.clone();
                self.api.node().tracker.spawn(async move {
                    let answer = match pending.await {
                        Ok(v) => to_msg(v),
                        Err(r) => Message::Error(error_body(&r)),
                    };
                    answers.send(encode_frame(rid, 0, &answer)).await;
                    drop(slot);
                });
                if self.answers.is_closed() {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// Sends a frame whose body the store already encoded (query answers share the service's
    /// cached snapshot body).
    /// An answer too large for one frame (a service of some hundred thousand instances) is
    /// refused with `TooLarge` instead.
    async fn send_body(&self, request_id: u32, opcode: Opcode, body: &Bytes) -> Flow {
        let mut out = BytesMut::with_capacity(12 + body.len());
        let framed = try_encode_raw_frame_into(&mut out, opcode as u8, request_id, 0, |b| {
            b.extend_from_slice(body);
            Ok(())
        });
        if let Err(e) = framed {
            let e = ErrorBody::new(
                ErrorCode::TooLarge,
                format!("the answer does not fit one frame ({e}); query one cluster at a time"),
            );
            return self.send_error(request_id, e).await;
        }
        if self.answers.send(out.freeze()).await {
            Flow::Continue
        } else {
            Flow::Close
        }
    }
}

/// The pushes of a session, written by the connection's writer between its answers: when the
/// push queue wakes, wait `push_delay_ms` more to coalesce, then encode the current snapshot of
/// every service with news.
struct Pushes {
    queue: Arc<PushQueue>,
    api: Api,
    delay: Duration,
}

impl Extra for Pushes {
    async fn ready(&mut self) {
        self.queue.wait().await
    }

    async fn fill(&mut self, buf: &mut BytesMut) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        for p in self.api.pushes(&self.queue, PUSH_BYTES_PER_WAKE) {
            let opcode = match p {
                Push::Full(_) => Opcode::Push,
                Push::Delta(_) => Opcode::PushDelta,
            };
            let framed = try_encode_raw_frame_into(buf, opcode as u8, 0, 0, |b| {
                b.extend_from_slice(p.body());
                Ok(())
            });
            if let Err(e) = framed {
                tracing::warn!(error = %e, "a push does not fit one frame; not sent");
            }
        }
    }
}
