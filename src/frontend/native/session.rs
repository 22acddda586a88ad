//! One client connection: a reader that decodes frames in order and turns each into a call of
//! the request API, and a writer task that batches answers and pushes onto the socket.
//!
//! Requests are pipelined: the client may send many before reading answers; each answer carries
//! its request's id. A frame that cannot be decoded is answered with an Error frame and the
//! connection is closed (the stream can no longer be trusted); nothing of it reaches the store.
//! A request that decodes but is not acceptable (a lease below the floor, a message only a node
//! sends) gets an Error frame with its own request id and the connection stays open.
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
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tracing::{debug, info};

use crate::api::subscriptions::PushQueue;
use crate::api::{AUTH_FAILURES_MAX, Api, Rejection, Session, Write};
use crate::model::BATCH_INSTANCES_MAX;
use crate::net::{BoxStream, StreamWriter};
use crate::wire::{
    ErrorBody, ErrorCode, FRAME_LEN_MAX, Frame, FrameCodec, HelloOk, Message, Opcode,
    PROTOCOL_VERSION, WireError, codec::encode_raw_frame_into, encode_frame,
};

/// Answers queued for the writer. When full the reader stops reading: a client that sends
/// faster than it reads is slowed down, not buffered without bound.
const ANSWER_QUEUE_MAX: usize = 1024;
/// The writer gathers answers up to this many bytes into one socket write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A client that does not read what it is sent for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

enum Flow {
    Continue,
    Close,
}

struct Conn {
    api: Api,
    session: Session,
    peer: SocketAddr,
    answers: mpsc::Sender<Bytes>,
}

/// Serves one client connection until it closes, fails, idles out or the node shuts down.
pub async fn serve(api: Api, stream: BoxStream, peer: SocketAddr) {
    let node = api.node().clone();
    let (rd, wr) = crate::net::split(stream);
    let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
    let (tx, rx) = mpsc::channel(ANSWER_QUEUE_MAX);
    let session = api.open_session();
    let writer = node.tracker.spawn(write_loop(
        wr,
        rx,
        session.push_queue().clone(),
        api.clone(),
    ));
    let mut c = Conn {
        api,
        session,
        peer,
        answers: tx,
    };
    debug!(%peer, session = c.session.id(), "client connected");
    let idle = Duration::from_millis(node.config.client_idle_timeout_ms);
    let mut node_closing = false;
    loop {
        let next = tokio::select! {
            _ = node.shutdown.cancelled() => {
                node_closing = true;
                c.send_error(0, Rejection::ShuttingDown.to_error_body()).await;
                break;
            }
            n = tokio::time::timeout(idle, frames.next()) => n,
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
                if let Flow::Close = c.handle(frame).await {
                    break;
                }
            }
        }
    }
    let lapsed = c.session.close(node_closing).await;
    if lapsed > 0 {
        info!(%peer, instances = lapsed, "session dropped; instances marked unhealthy");
    }
    drop(c);
    let _ = writer.await;
    debug!(%peer, "client disconnected");
}

impl Conn {
    async fn send(&self, request_id: u32, msg: &Message) -> Flow {
        match self.answers.send(encode_frame(request_id, 0, msg)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn send_error(&self, request_id: u32, e: ErrorBody) -> Flow {
        self.send(request_id, &Message::Error(e)).await
    }

    /// Answers `rid` with `answer`'s message, or with the Error frame of its rejection.
    async fn answer(&self, rid: u32, answer: Result<Message, Rejection>) -> Flow {
        match answer {
            Ok(m) => self.send(rid, &m).await,
            Err(r) => self.send_error(rid, r.to_error_body()).await,
        }
    }

    /// The bytes of the stream are not a valid frame: say why, then close.
    async fn reject_stream(&self, request_id: u32, e: &WireError) {
        info!(peer = %self.peer, error = %e, "closing client connection on a bad frame");
        self.send_error(request_id, ErrorBody::new(e.code(), e.to_string()))
            .await;
    }

    async fn handle(&mut self, frame: Frame) -> Flow {
        if self.session.is_revoked() {
            info!(peer = %self.peer, "closing client connection: its token was withdrawn");
            self.send_error(0, Rejection::Unauthenticated.to_error_body())
                .await;
            return Flow::Close;
        }
        let flow = self.dispatch(frame).await;
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

    async fn dispatch(&mut self, frame: Frame) -> Flow {
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
                self.write(rid, w, Message::Ack).await
            }
            Message::Deregister(keys) => {
                let w = self.session.deregister(keys).await;
                self.write(rid, w, Message::Ack).await
            }
            Message::Beat(keys) => {
                let w = self.session.beat(keys).await;
                self.write(rid, w, Message::BeatAck).await
            }
            Message::Query(q) => match self.session.query(&q.name, &q.cluster, q.healthy_only) {
                Ok(snap) => self.send_body(rid, Opcode::QueryResult, snap.body()).await,
                Err(r) => self.send_error(rid, r.to_error_body()).await,
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
    /// reading.
    async fn write<T: Send + 'static>(
        &self,
        rid: u32,
        w: Write<T>,
        to_msg: fn(T) -> Message,
    ) -> Flow {
        match w {
            Write::Done(r) => self.answer(rid, r.map(to_msg)).await,
            Write::Pending(pending) => {
                let answers = self.answers.clone();
                self.api.node().tracker.spawn(async move {
                    let answer = match pending.await {
                        Ok(v) => to_msg(v),
                        Err(r) => Message::Error(r.to_error_body()),
                    };
                    let _ = answers.send(encode_frame(rid, 0, &answer)).await;
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
    async fn send_body(&self, request_id: u32, opcode: Opcode, body: &Bytes) -> Flow {
        let mut out = BytesMut::with_capacity(12 + body.len());
        encode_raw_frame_into(&mut out, opcode as u8, request_id, 0, |b| {
            b.extend_from_slice(body)
        });
        match self.answers.send(out.freeze()).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

/// Writes answers and pushes, gathering whatever is ready into one socket write.
async fn write_loop(
    mut wr: StreamWriter,
    mut answers: mpsc::Receiver<Bytes>,
    push: Arc<PushQueue>,
    api: Api,
) {
    let push_delay = Duration::from_millis(api.node().config.push_delay_ms);
    let mut buf = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            a = answers.recv() => match a {
                Some(b) => {
                    buf.extend_from_slice(&b);
                    crate::net::gather_queued(&mut buf, &mut answers, WRITE_BATCH_BYTES).await;
                }
                None => {
                    if !buf.is_empty() {
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await;
                    }
                    let _ = wr.shutdown().await;
                    return;
                }
            },
            _ = push.wait() => {
                if !push_delay.is_zero() {
                    tokio::time::sleep(push_delay).await;
                }
                for snap in api.pushes(&push) {
                    encode_raw_frame_into(&mut buf, Opcode::Push as u8, 0, 0, |b| {
                        b.extend_from_slice(snap.body())
                    });
                }
            }
        }
        if buf.is_empty() {
            continue;
        }
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await {
            Ok(Ok(())) => crate::net::recycle_write_buf(&mut buf),
            _ => {
                debug!("client write failed or timed out; dropping connection");
                return;
            }
        }
    }
}
