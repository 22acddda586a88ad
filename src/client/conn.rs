//! One SDK connection to one node: the Hello exchange, then requests through the connection
//! layer's multiplexer ([`crate::net::mux`]); pushes (frames of request id 0) go to the
//! subscriptions.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ClientError;
use super::cache::{PushSink, Pushed};
use crate::net::{Mux, MuxConfig, MuxError};
use crate::wire::{FRAME_LEN_MAX, FrameCodec, Hello, HelloOk, Message, PROTOCOL_VERSION};

/// The bounds of an SDK connection.
const MUX: MuxConfig = MuxConfig {
    // Requests awaiting answers at once: far beyond what an application pipelines on one
    // connection (distro-bench drives thousands), so it only stops a runaway caller from growing
    // the table without end; a caller beyond it waits for a slot within its deadline.
    pending_max: 65_536,
    // Requests queued for the writer before callers wait.
    outbox_frames: 4096,
    // One socket write gathers up to this much: many pipelined requests, one syscall.
    write_batch_bytes: 256 << 10,
    // No client message of version 1 has a streamed answer; a frame of slack.
    stream_frames: 1,
};

/// A live connection. Dropping the last handle does not close it; `close` does, and so does any
/// read or write failure, and the cancellation of the token it was opened under.
pub struct Conn {
    pub addr: String,
    pub hello: HelloOk,
    mux: Arc<Mux>,
    /// Cancelled when the connection has ended.
    pub closed: CancellationToken,
}

impl Conn {
    /// Connects, says Hello, and starts the reader and writer in `tasks`. `on_push` gets every
    /// Push and PushDelta, in the order they came. Cancelling `parent` closes the connection.
    pub async fn open(
        dialer: &dyn crate::net::Dialer,
        addr: &str,
        client_name: &str,
        timeout: Duration,
        on_push: PushSink,
        tasks: &TaskTracker,
        parent: &CancellationToken,
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
        let frames = FramedRead::new(rd, FrameCodec::new(FRAME_LEN_MAX));
        let closed = parent.child_token();
        let mux = Mux::start(frames, wr, MUX, closed.clone(), tasks, move |msg| {
            // A connection-level Error (request id 0) means the node is closing this
            // connection; the reader sees the end next.
            match msg {
                Message::Push(snap) => on_push(Pushed::Full(snap)),
                Message::PushDelta(d) => on_push(Pushed::Delta(d)),
                _ => {}
            }
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
            mux,
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
        self.mux.is_closed()
    }

    pub fn close(&self) {
        self.mux.close();
    }

    /// Sends one request and waits for its answer (an Error frame is returned as a message).
    pub async fn call(&self, msg: &Message, timeout: Duration) -> Result<Message, ClientError> {
        self.mux.call(msg, timeout).await.map_err(|e| match e {
            MuxError::Closed => ClientError::ConnectionLost,
            MuxError::SendTimeout | MuxError::AnswerTimeout => ClientError::Timeout {
                what: "request",
                ms: timeout.as_millis() as u64,
            },
            MuxError::Unencodable { reason } => ClientError::Invalid(reason),
        })
    }
}
