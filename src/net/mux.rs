//! The request multiplexer of a connection that sends requests: the SDK's connection to a node
//! ([`crate::client::Conn`]) and a node's links to its peers (`cluster::link`).
//!
//! - **Ids**: every request gets a request id that no other request waiting on the connection
//!   has (1, 2, 3, …; 0 is never used: it marks frames that answer nothing).
//! - **Pending table with a bound**: at most [`MuxConfig::pending_max`] requests wait for answers
//!   at once; a caller beyond it waits for a slot within its deadline.
//! - **Deadlines**: a request that is not queued and answered within its deadline fails with a
//!   timeout, and its entry goes (also when the caller's future is dropped).
//! - **Streamed answers**: an answer of several frames linked by `FLAG_MORE` comes as a
//!   [`StreamedAnswer`]; its frames are buffered up to [`MuxConfig::stream_frames`], beyond that
//!   the reader waits for the consumer.
//! - **Fire-and-forget frames**: [`Mux::send`] queues a pre-encoded frame that expects no answer
//!   (sync batches and digests, encoded once for all peers), or refuses it when the queue is full.
//! - **Frames that answer nothing** (request id 0: the node's pushes, a connection-level error)
//!   go to the `unsolicited` handler given at the start.
//! - **The end of the connection** (the peer closed it, a frame that does not decode, a write that
//!   failed, [`Mux::close`]) fails every request waiting and every one made after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::writer::{self, NoExtra, WriterConfig};
use super::{StreamReader, StreamWriter};
use crate::hash::HashMap;
use crate::wire::{FLAG_MORE, FrameCodec, Message, WireError, try_encode_frame_into};

/// The bounds of one multiplexed connection.
#[derive(Debug, Clone, Copy)]
pub struct MuxConfig {
    /// Requests waiting for answers at once.
    pub pending_max: usize,
    /// Frames queued for the writer; a request beyond it waits (within its deadline), a
    /// fire-and-forget frame is refused.
    pub outbox_frames: usize,
    /// The writer gathers queued frames up to about this many bytes into one socket write.
    pub write_batch_bytes: usize,
    /// Frames of one streamed answer received and not yet consumed; beyond it the reader stops
    /// reading the connection until the consumer catches up.
    pub stream_frames: usize,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MuxError {
    /// The connection ended (before or while the request waited).
    #[error("connection closed")]
    Closed,
    /// No slot in the pending table or the outbox freed up before the deadline: the request was
    /// never sent.
    #[error("the request could not be sent within its deadline")]
    SendTimeout,
    /// The request was sent; its answer did not come before the deadline.
    #[error("no answer within the deadline")]
    AnswerTimeout,
    /// The request does not fit the wire's limits (a frame or a field too large); nothing was
    /// sent.
    #[error("request not sent: {reason}")]
    Unencodable { reason: String },
}

enum Waiter {
    One(oneshot::Sender<Message>),
    Stream(mpsc::Sender<Message>),
}

struct Entry {
    waiter: Waiter,
    /// Tells this entry from a later one under the same id, so that a caller whose request timed
    /// out never removes another's.
    seq: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u32, Entry>,
    next_id: u32,
    next_seq: u64,
    /// Set when the connection ended: nothing is added after it.
    closed: bool,
}

struct Pending {
    table: Mutex<Table>,
    /// One permit per free entry of the table.
    slots: Semaphore,
}

impl Pending {
    /// Takes the entry `id` if it is still the one of `seq`; frees its slot.
    fn remove(&self, id: u32, seq: u64) -> Option<Waiter> {
        let mut t = self.table.lock().unwrap();
        match t.entries.get(&id) {
            Some(e) if e.seq == seq => {}
            _ => return None,
        }
        let e = t.entries.remove(&id).expect("just found");
        drop(t);
        self.slots.add_permits(1);
        Some(e.waiter)
    }

    /// The connection ended: drops every waiter (which wakes its caller with `Closed`) and
    /// refuses new ones.
    fn close(&self) {
        let drained: Vec<Entry> = {
            let mut t = self.table.lock().unwrap();
            t.closed = true;
            t.entries.drain().map(|(_, e)| e).collect()
        };
        self.slots.close();
        drop(drained);
    }
}

/// One connection's request multiplexer. Cheap to share (`Arc`); [`Mux::close`] or the end of
/// the connection stops its reader and writer.
pub struct Mux {
    outbox: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    closed: CancellationToken,
    opened: Instant,
    /// How long after `opened` the connection last received a frame (ms).
    last_rx_ms: Arc<AtomicU64>,
    stream_frames: usize,
}

impl Mux {
    /// Starts the reader and the writer of a connection, in `tracker`. `frames` may hold bytes
    /// already read (after a handshake). `closed` ends the connection when cancelled (pass a
    /// child of an owner's token to end it with its owner); the connection cancels it itself
    /// when it ends. `unsolicited` gets every frame of request id 0.
    pub fn start(
        frames: FramedRead<StreamReader, FrameCodec>,
        wr: StreamWriter,
        config: MuxConfig,
        closed: CancellationToken,
        tracker: &TaskTracker,
        unsolicited: impl FnMut(Message) + Send + 'static,
    ) -> Arc<Mux> {
        let (tx, rx) = mpsc::channel(config.outbox_frames);
        let pending = Arc::new(Pending {
            table: Mutex::new(Table {
                next_id: 1,
                ..Table::default()
            }),
            slots: Semaphore::new(config.pending_max),
        });
        let writer_config = WriterConfig {
            batch_bytes: config.write_batch_bytes,
            write_timeout: None,
        };
        tracker.spawn(writer::run(wr, rx, writer_config, closed.clone(), NoExtra));
        let mux = Arc::new(Mux {
            outbox: tx,
            pending: pending.clone(),
            closed: closed.clone(),
            opened: Instant::now(),
            last_rx_ms: Arc::new(AtomicU64::new(0)),
            stream_frames: config.stream_frames.max(1),
        });
        let reader = Reader {
            pending,
            closed,
            opened: mux.opened,
            last_rx_ms: mux.last_rx_ms.clone(),
        };
        tracker.spawn(reader.run(frames, unsolicited));
        mux
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Ends the connection: stops its reader and writer and fails every request waiting.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Cancelled when the connection has ended.
    pub fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// How long since the connection last received a frame (or was opened).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Requests waiting for answers now.
    pub fn pending(&self) -> usize {
        self.pending.table.lock().unwrap().entries.len()
    }

    /// Queues a pre-encoded frame that expects no answer. False when the connection is closed or
    /// its outbox is full (the caller decides what a dropped frame costs).
    pub fn send(&self, frame: Bytes) -> bool {
        !self.is_closed() && self.outbox.try_send(frame).is_ok()
    }

    /// One request, one answer (an Error frame is an answer too), within `timeout`.
    pub async fn call(&self, msg: &Message, timeout: Duration) -> Result<Message, MuxError> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let guard = self.enqueue(msg, Waiter::One(tx), deadline).await?;
        let answer = tokio::time::timeout_at(deadline, rx).await;
        match answer {
            Ok(answered) => {
                // The reader took the entry to answer it, or the end of the connection did.
                guard.disarm();
                answered.map_err(|_| MuxError::Closed)
            }
            Err(_) => Err(MuxError::AnswerTimeout),
        }
    }

    /// A request whose answer may come in several frames (`FLAG_MORE` on all but the last). The
    /// deadline covers sending it; each frame's is the consumer's.
    pub async fn call_stream(
        &self,
        msg: &Message,
        timeout: Duration,
    ) -> Result<StreamedAnswer, MuxError> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::channel(self.stream_frames);
        let guard = self.enqueue(msg, Waiter::Stream(tx), deadline).await?;
        Ok(StreamedAnswer { rx, _guard: guard })
    }

    /// Takes a slot of the pending table, enters `waiter` under a fresh id, and queues the
    /// request; all before `deadline`.
    async fn enqueue(
        &self,
        msg: &Message,
        waiter: Waiter,
        deadline: Instant,
    ) -> Result<EntryGuard, MuxError> {
        if self.is_closed() {
            return Err(MuxError::Closed);
        }
        match tokio::time::timeout_at(deadline, self.pending.slots.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(MuxError::Closed),
            Err(_) => return Err(MuxError::SendTimeout),
        }
        let (id, seq) = {
            let mut t = self.pending.table.lock().unwrap();
            if t.closed {
                drop(t);
                self.pending.slots.add_permits(1);
                return Err(MuxError::Closed);
            }
            let id = free_id(&mut t);
            let seq = t.next_seq;
            t.next_seq += 1;
            t.entries.insert(id, Entry { waiter, seq });
            (id, seq)
        };
        let guard = EntryGuard {
            pending: self.pending.clone(),
            id,
            seq,
            armed: true,
        };
        let mut frame = BytesMut::new();
        try_encode_frame_into(&mut frame, id, 0, msg).map_err(|e: WireError| {
            MuxError::Unencodable {
                reason: e.to_string(),
            }
        })?;
        match tokio::time::timeout_at(deadline, self.outbox.send(frame.freeze())).await {
            Ok(Ok(())) => Ok(guard),
            Ok(Err(_)) => Err(MuxError::Closed),
            Err(_) => Err(MuxError::SendTimeout),
        }
    }
}

/// The next id after the last one given that no waiting request holds (never 0).
fn free_id(t: &mut Table) -> u32 {
    loop {
        let id = t.next_id;
        t.next_id = t.next_id.wrapping_add(1);
        if id != 0 && !t.entries.contains_key(&id) {
            return id;
        }
    }
}

/// Removes its request's entry when the caller is done with it (answered, timed out, or its
/// future dropped), freeing the slot.
struct EntryGuard {
    pending: Arc<Pending>,
    id: u32,
    seq: u64,
    armed: bool,
}

impl EntryGuard {
    /// The entry is gone already (answered, or the connection ended): nothing to remove.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        if self.armed {
            self.pending.remove(self.id, self.seq);
        }
    }
}

/// The frames of a streamed answer, in order. Dropping it before the end forgets the request
/// (frames still arriving for it are discarded).
pub struct StreamedAnswer {
    rx: mpsc::Receiver<Message>,
    _guard: EntryGuard,
}

impl StreamedAnswer {
    /// The next frame's message; `None` after the last frame, or when the connection ended
    /// (check [`Mux::is_closed`] to tell the two apart).
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

/// What an answer frame's request id finds in the pending table.
enum Found {
    One(oneshot::Sender<Message>),
    Stream(mpsc::Sender<Message>, u64),
    Nothing,
}

struct Reader {
    pending: Arc<Pending>,
    closed: CancellationToken,
    opened: Instant,
    last_rx_ms: Arc<AtomicU64>,
}

impl Reader {
    async fn run(
        self,
        mut frames: FramedRead<StreamReader, FrameCodec>,
        mut unsolicited: impl FnMut(Message),
    ) {
        loop {
            let next = tokio::select! {
                _ = self.closed.cancelled() => break,
                n = frames.next() => n,
            };
            let Some(Ok(frame)) = next else { break };
            self.last_rx_ms
                .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
            // A frame that does not decode: the stream can no longer be trusted.
            let Ok(msg) = frame.message() else { break };
            if frame.request_id == 0 {
                unsolicited(msg);
                continue;
            }
            let more = frame.flags & FLAG_MORE != 0;
            let found = {
                let mut t = self.pending.table.lock().unwrap();
                match t.entries.get(&frame.request_id) {
                    Some(Entry {
                        waiter: Waiter::Stream(tx),
                        seq,
                    }) => Found::Stream(tx.clone(), *seq),
                    Some(_) => match t.entries.remove(&frame.request_id) {
                        Some(Entry {
                            waiter: Waiter::One(tx),
                            ..
                        }) => Found::One(tx),
                        _ => unreachable!("the entry was just found"),
                    },
                    None => Found::Nothing,
                }
            };
            match found {
                Found::One(tx) => {
                    self.pending.slots.add_permits(1);
                    let _ = tx.send(msg);
                }
                Found::Nothing => {}
                Found::Stream(tx, seq) => {
                    // The consumer is slow: wait for it (bounded buffer) instead of queueing;
                    // stop waiting when the connection ends.
                    let delivered = tokio::select! {
                        _ = self.closed.cancelled() => break,
                        r = tx.send(msg) => r.is_ok(),
                    };
                    if !delivered || !more {
                        // The last frame, or a consumer that is gone: the stream ends when its
                        // sender is dropped.
                        self.pending.remove(frame.request_id, seq);
                    }
                }
            }
        }
        self.closed.cancel();
        self.pending.close();
    }
}

#[cfg(test)]
mod tests;
