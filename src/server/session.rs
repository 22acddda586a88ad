//! One client connection: a reader that decodes and handles frames in order, and a writer task
//! that batches answers and pushes onto the socket.
//!
//! Requests are pipelined: the client may send many before reading answers; each answer carries
//! its request's id. A frame that cannot be decoded is answered with an Error frame and the
//! connection is closed (the stream can no longer be trusted); nothing of it reaches the store.
//! A request that is valid but not acceptable (a lease below the floor) gets an Error frame and
//! the connection stays open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::hash::HashSet;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tracing::{debug, info};

use super::Node;
use super::inflight::InFlight;
use super::push::{PushQueue, SUBSCRIPTIONS_PER_CONNECTION_MAX};
use crate::model::{InstanceKey, PAGE_SIZE_MAX, ServiceName, Text};
use crate::net::{BoxStream, StreamWriter};
use crate::wire::{
    ErrorBody, ErrorCode, FRAME_LEN_MAX, Frame, FrameCodec, HelloOk, Message, Opcode,
    PROTOCOL_VERSION, Query, WireError, codec::encode_raw_frame_into, encode_frame,
};

/// Answers queued for the writer. When full the reader stops reading: a client that sends
/// faster than it reads is slowed down, not buffered without bound.
const ANSWER_QUEUE_MAX: usize = 1024;
/// The writer gathers answers up to this many bytes into one socket write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A client that does not read what it is sent for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Session-bound instances one connection may hold; bounds what a drop has to lapse.
pub const BOUND_PER_SESSION_MAX: usize = 100_000;

enum Flow {
    Continue,
    Close,
}

struct Session {
    node: Arc<Node>,
    id: u64,
    peer: SocketAddr,
    answers: mpsc::Sender<Bytes>,
    push: Arc<PushQueue>,
    /// Session-bound instances registered over this connection and not deregistered.
    bound: HashSet<InstanceKey>,
    subscribed: HashSet<ServiceName>,
    /// Writes running concurrently (clustered nodes only; a standalone node applies each write
    /// at once).
    inflight: Arc<InFlight>,
}

/// Serves one client connection until it closes, fails, idles out or the node shuts down.
pub async fn serve(node: Arc<Node>, stream: BoxStream, peer: SocketAddr) {
    let (rd, wr) = crate::net::split(stream);
    let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
    let (tx, rx) = mpsc::channel(ANSWER_QUEUE_MAX);
    let push = node.subs.new_queue();
    let writer = tokio::spawn(write_loop(wr, rx, push.clone(), node.clone()));
    let mut s = Session {
        id: node.new_session(),
        node: node.clone(),
        peer,
        answers: tx,
        push,
        bound: HashSet::default(),
        subscribed: HashSet::default(),
        inflight: Arc::default(),
    };
    debug!(%peer, session = s.id, "client connected");
    let idle = Duration::from_millis(node.config.client_idle_timeout_ms);
    let mut node_closing = false;
    loop {
        let next = tokio::select! {
            _ = node.shutdown.cancelled() => {
                node_closing = true;
                s.send_error(0, ErrorBody::new(ErrorCode::ShuttingDown, "node is shutting down")).await;
                break;
            }
            n = tokio::time::timeout(idle, frames.next()) => n,
        };
        match next {
            Err(_) => {
                info!(%peer, session = s.id, "client idle past the timeout; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                s.reject_stream(0, &e).await;
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Flow::Close = s.handle(frame).await {
                    break;
                }
            }
        }
    }
    s.close(node_closing).await;
    drop(s);
    let _ = writer.await;
    debug!(%peer, "client disconnected");
}

impl Session {
    async fn send(&self, request_id: u32, msg: &Message) -> Flow {
        match self.answers.send(encode_frame(request_id, 0, msg)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn send_error(&self, request_id: u32, e: ErrorBody) -> Flow {
        self.send(request_id, &Message::Error(e)).await
    }

    /// The bytes of the stream are not a valid frame: say why, then close.
    async fn reject_stream(&self, request_id: u32, e: &WireError) {
        info!(peer = %self.peer, error = %e, "closing client connection on a bad frame");
        self.send_error(request_id, ErrorBody::new(e.code(), e.to_string()))
            .await;
    }

    async fn handle(&mut self, frame: Frame) -> Flow {
        let rid = frame.request_id;
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                self.reject_stream(rid, &e).await;
                return Flow::Close;
            }
        };
        let needs_ready = !matches!(
            msg,
            Message::Hello(_) | Message::Ping(_) | Message::ClusterStatus
        );
        if needs_ready && !self.node.is_ready() {
            return self
                .send_error(
                    rid,
                    ErrorBody::new(
                        ErrorCode::NotReady,
                        "node is still loading the cluster's data; try another node",
                    ),
                )
                .await;
        }
        match msg {
            Message::Hello(h) => {
                if h.max_version < PROTOCOL_VERSION {
                    return self
                        .send_error(
                            rid,
                            ErrorBody::new(
                                ErrorCode::UnsupportedVersion,
                                format!(
                                    "client speaks up to version {}, node speaks {PROTOCOL_VERSION}",
                                    h.max_version
                                ),
                            ),
                        )
                        .await;
                }
                let ok = HelloOk {
                    version: PROTOCOL_VERSION,
                    node_id: self.node.config.node_id,
                    ready: self.node.is_ready(),
                    frame_len_max: FRAME_LEN_MAX as u32,
                    batch_instances_max: crate::model::BATCH_INSTANCES_MAX as u16,
                    lease_floor_ms: self.node.config.lease_floor_ms,
                };
                self.send(rid, &Message::HelloOk(ok)).await
            }
            Message::Ping(n) => self.send(rid, &Message::Pong(n)).await,
            Message::Register(reg) => {
                let new_bound = if reg.session_bound {
                    reg.instances
                        .iter()
                        .filter(|i| !self.bound.contains(&i.key))
                        .count()
                } else {
                    0
                };
                if self.bound.len() + new_bound > BOUND_PER_SESSION_MAX {
                    return self
                        .send_error(
                            rid,
                            ErrorBody::new(
                                ErrorCode::InvalidArgument,
                                format!(
                                    "more than {BOUND_PER_SESSION_MAX} session-bound instances on one connection"
                                ),
                            ),
                        )
                        .await;
                }
                // Tracked before the outcome is known: a key that failed to register stays in
                // the set, which is harmless (a lapse only touches records bound to this
                // session).
                for i in &reg.instances {
                    if reg.session_bound {
                        self.bound.insert(i.key.compact());
                    } else if !self.bound.is_empty() {
                        self.bound.remove(&i.key);
                    }
                }
                let keys = self.claim_hashes(reg.instances.iter().map(|i| &i.key));
                let session = self.id;
                self.write(rid, keys, move |node| async move {
                    node.register(&reg, session).await.map(Message::Ack)
                })
                .await
            }
            Message::Deregister(keys) => {
                for k in &keys {
                    self.bound.remove(k);
                }
                let hashes = self.claim_hashes(keys.iter());
                self.write(rid, hashes, move |node| async move {
                    node.deregister(&keys).await.map(Message::Ack)
                })
                .await
            }
            Message::Beat(keys) => {
                // Beats claim no keys: they only renew, in any order, and one waiting on a
                // forward to an owner that stopped answering must not hold up the next beat of
                // the same keys (which renews those this node owns at once).
                self.write(rid, Vec::new(), move |node| async move {
                    node.beat(&keys).await.map(Message::BeatAck)
                })
                .await
            }
            Message::Query(q) => {
                let body = self.node.store.query(&q);
                self.send_body(rid, Opcode::QueryResult, &body).await
            }
            Message::ListServices(l) => {
                if l.page_size == 0 || l.page_size as usize > PAGE_SIZE_MAX {
                    return self
                        .send_error(
                            rid,
                            ErrorBody::new(
                                ErrorCode::InvalidArgument,
                                format!("page size must be 1..={PAGE_SIZE_MAX}"),
                            ),
                        )
                        .await;
                }
                let list = self
                    .node
                    .store
                    .list_services(&l.namespace, l.page, l.page_size);
                self.send(rid, &Message::ServiceList(list)).await
            }
            Message::Subscribe(name) => {
                if !self.subscribed.contains(&name)
                    && self.subscribed.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX
                {
                    return self
                        .send_error(
                            rid,
                            ErrorBody::new(
                                ErrorCode::InvalidArgument,
                                format!(
                                    "more than {SUBSCRIPTIONS_PER_CONNECTION_MAX} subscriptions on one connection"
                                ),
                            ),
                        )
                        .await;
                }
                let name = compact(&name);
                self.node.subs.subscribe(&name, &self.push);
                self.subscribed.insert(name.clone());
                let flow = self.send(rid, &Message::Ack(1)).await;
                // The first push is the current list, so the subscriber starts from a snapshot.
                self.push.forget(&name);
                self.push.mark(&name);
                flow
            }
            Message::Unsubscribe(name) => {
                self.node.subs.unsubscribe(&name, &self.push);
                let was = self.subscribed.remove(&name);
                self.send(rid, &Message::Ack(was as u32)).await
            }
            Message::ClusterStatus => {
                let status = self.node.cluster_status();
                self.send(rid, &Message::ClusterStatusResult(status)).await
            }
            Message::Owner { ip, port } => {
                let owner = self.node.store.ownership().owner(&ip, port);
                self.send(rid, &Message::OwnerResult(owner)).await
            }
            other => {
                self.send_error(
                    rid,
                    ErrorBody::new(
                        ErrorCode::NotAllowed,
                        format!("{:?} is not a request a node accepts", other.opcode()),
                    ),
                )
                .await
            }
        }
    }

    /// What a write claims in [`InFlight`]: nothing on a standalone node, which applies writes
    /// one at a time anyway.
    fn claim_hashes<'a>(&self, keys: impl Iterator<Item = &'a InstanceKey>) -> Vec<u64> {
        if self.node.cluster.is_some() {
            InFlight::hashes(keys)
        } else {
            Vec::new()
        }
    }

    /// Runs a write: at once on a standalone node; on a clustered node in its own task (it may
    /// wait on forwards to other nodes), after earlier in-flight writes to the same keys, so that
    /// the connection keeps reading while it runs.
    async fn write<F, Fut>(&self, rid: u32, keys: Vec<u64>, op: F) -> Flow
    where
        F: FnOnce(Arc<Node>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Message, ErrorBody>> + Send + 'static,
    {
        if self.node.cluster.is_none() {
            return match op(self.node.clone()).await {
                Ok(m) => self.send(rid, &m).await,
                Err(e) => self.send_error(rid, e).await,
            };
        }
        let claim = self.inflight.claim(keys).await;
        let node = self.node.clone();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            let answer = match op(node).await {
                Ok(m) => m,
                Err(e) => Message::Error(e),
            };
            let _ = answers.send(encode_frame(rid, 0, &answer)).await;
            drop(claim);
        });
        if self.answers.is_closed() {
            Flow::Close
        } else {
            Flow::Continue
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

    /// Drops subscriptions; if the client went away (not the node), lapses its session-bound
    /// instances so subscribers learn at once.
    async fn close(&mut self, node_closing: bool) {
        for name in self.subscribed.drain() {
            self.node.subs.unsubscribe(&name, &self.push);
        }
        // Let the writes still in flight land first (each has a forward deadline), so that a
        // register that completes after the drop is lapsed too.
        let _ =
            tokio::time::timeout(crate::cluster::FORWARD_TIMEOUT * 2, self.inflight.drain()).await;
        if !node_closing && !self.bound.is_empty() {
            let keys: Vec<InstanceKey> = self.bound.drain().collect();
            info!(peer = %self.peer, instances = keys.len(), "session dropped; instances marked unhealthy");
            self.node.lapse_session(self.id, keys).await;
        }
    }
}

fn compact(name: &ServiceName) -> ServiceName {
    ServiceName {
        namespace: Text::from(name.namespace.as_str()),
        group: Text::from(name.group.as_str()),
        service: Text::from(name.service.as_str()),
    }
}

/// Writes answers and pushes, gathering whatever is ready into one socket write.
async fn write_loop(
    mut wr: StreamWriter,
    mut answers: mpsc::Receiver<Bytes>,
    push: Arc<PushQueue>,
    node: Arc<Node>,
) {
    let push_delay = Duration::from_millis(node.config.push_delay_ms);
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
                for name in push.take() {
                    let body = node.store.query(&Query {
                        name: name.clone(),
                        cluster: Text::default(),
                        healthy_only: false,
                    });
                    if !snapshot_revision(&body).is_none_or(|rev| push.is_news(&name, rev)) {
                        continue;
                    }
                    encode_raw_frame_into(&mut buf, Opcode::Push as u8, 0, 0, |b| {
                        b.extend_from_slice(&body)
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

/// The revision in an encoded snapshot body (the store encoded it, so it always decodes).
fn snapshot_revision(body: &Bytes) -> Option<u64> {
    let mut r = crate::wire::Reader::new(body.clone());
    ServiceName::decode(&mut r)
        .and_then(|_| r.u64("revision"))
        .ok()
}
