//! One SDK connection to one node: a writer task, a reader task that matches answers to
//! requests by id and hands pushes to the subscriptions, and the request table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::hash::HashMap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::ClientError;
use super::cache::{PushSink, Pushed};
use crate::wire::{
    FRAME_LEN_MAX, FrameCodec, Hello, HelloOk, Message, PROTOCOL_VERSION, encode_frame_into,
};

/// Requests queued for the writer before callers wait.
const OUTBOX_MAX: usize = 4096;

type Pending = Arc<std::sync::Mutex<HashMap<u32, oneshot::Sender<Message>>>>;

/// A live connection. Dropping the last handle does not close it; `close` does, and so does any
/// read or write failure.
pub struct Conn {
    pub addr: String,
    pub hello: HelloOk,
    outbox: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: AtomicU32,
    pub closed: CancellationToken,
}

impl Conn {
    /// Connects, says Hello, and starts the reader and writer. `on_push` gets every Push and
    /// PushDelta, in the order they came.
    pub async fn open(
        dialer: &dyn crate::net::Dialer,
        addr: &str,
        client_name: &str,
        timeout: Duration,
        on_push: PushSink,
    ) -> Result<Arc<Conn>, ClientError> {
        let ms = timeout.as_millis() as u64;
        let stream = tokio::time::timeout(timeout, dialer.connect(addr.to_string()))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "connect",
                ms,
            })?
            .map_err(|e| ClientError::NoServer {
                tried: 1,
                last: format!("{addr}: {e}"),
            })?;
        let (rd, wr) = crate::net::split(stream);
        let (tx, rx) = mpsc::channel::<Bytes>(OUTBOX_MAX);
        let pending: Pending = Default::default();
        let closed = CancellationToken::new();

        // Writer: gathers queued frames into one write.
        tokio::spawn(crate::net::write_frames(wr, rx, 256 << 10, closed.clone()));

        // Reader: answers by request id; pushes (request id 0) to the subscriptions.
        let rpending = pending.clone();
        let rclosed = closed.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
            loop {
                let next = tokio::select! {
                    _ = rclosed.cancelled() => break,
                    n = frames.next() => n,
                };
                let Some(Ok(frame)) = next else { break };
                let Ok(msg) = frame.message() else { break };
                match msg {
                    Message::Push(snap) if frame.request_id == 0 => on_push(Pushed::Full(snap)),
                    Message::PushDelta(d) if frame.request_id == 0 => on_push(Pushed::Delta(d)),
                    // A connection-level error (request id 0): the node is closing this
                    // connection; the reader sees the end next.
                    Message::Error(_) if frame.request_id == 0 => {}
                    msg => {
                        let waiter = rpending.lock().unwrap().remove(&frame.request_id);
                        if let Some(w) = waiter {
                            let _ = w.send(msg);
                        }
                    }
                }
            }
            rclosed.cancel();
            // Fail everything still waiting: dropping the senders wakes the callers.
            rpending.lock().unwrap().clear();
        });

        let conn = Conn {
            addr: addr.to_string(),
            hello: HelloOk {
                version: 0,
                node_id: 0,
                ready: false,
                frame_len_max: 0,
                batch_instances_max: 0,
                lease_floor_ms: 0,
            },
            outbox: tx,
            pending,
            next_id: AtomicU32::new(1),
            closed,
        };
        let hello = Message::Hello(Hello {
            max_version: PROTOCOL_VERSION,
            client_name: client_name.into(),
        });
        match conn.call(&hello, timeout).await {
            Ok(Message::HelloOk(h)) => {
                let conn = Conn { hello: h, ..conn };
                Ok(Arc::new(conn))
            }
            Ok(Message::Error(e)) => {
                conn.close();
                Err(ClientError::from_body(e))
            }
            Ok(other) => {
                conn.close();
                Err(ClientError::Unexpected(format!("{:?}", other.opcode())))
            }
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Sends one request and waits for its answer (an Error frame is returned as a message).
    pub async fn call(&self, msg: &Message, timeout: Duration) -> Result<Message, ClientError> {
        if self.is_closed() {
            return Err(ClientError::ConnectionLost);
        }
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            // 0 is reserved for pushes and connection-level errors.
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut frame = BytesMut::new();
        encode_frame_into(&mut frame, id, 0, msg);
        let ms = timeout.as_millis() as u64;
        let sent = tokio::time::timeout(timeout, self.outbox.send(frame.freeze())).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.pending.lock().unwrap().remove(&id);
            return Err(if sent.is_err() {
                ClientError::Timeout {
                    what: "request",
                    ms,
                }
            } else {
                ClientError::ConnectionLost
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(ClientError::ConnectionLost),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(ClientError::Timeout {
                    what: "request",
                    ms,
                })
            }
        }
    }
}
