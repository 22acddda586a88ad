//! The answering side of a streamed answer (the other side is [`super::mux::StreamedAnswer`]):
//! frames of one request id, `FLAG_MORE` on every one but the last, produced as they are sent.
//!
//! A producer that encodes faster than the connection writes must not run ahead without bound:
//! at most `window` frames of one answer are queued for the writer at once, and the producer
//! waits for the writer to take one before it queues the next. So an answer of any size costs
//! its connection about `window` frames of memory, not the whole answer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::wire::{FLAG_MORE, set_frame_flags};

/// The connection ended before the answer was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection closed during a streamed answer")]
pub struct StreamClosed;

/// Sends the frames of one streamed answer onto a connection's frame queue.
pub struct StreamSender {
    tx: mpsc::Sender<Bytes>,
    /// The last frame given, held back until it is known whether another follows it.
    held: Option<BytesMut>,
    window: Arc<Semaphore>,
}

/// A queued frame holding a slot of its answer's window until the writer has taken its bytes.
struct Windowed {
    frame: BytesMut,
    _slot: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Windowed {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl StreamSender {
    /// An answer sent on `tx` with at most `window` frames queued at once.
    pub fn new(tx: mpsc::Sender<Bytes>, window: usize) -> StreamSender {
        StreamSender {
            tx,
            held: None,
            window: Arc::new(Semaphore::new(window.max(1))),
        }
    }

    /// Adds a whole frame to the answer (encoded with the request's id and flags 0; the flag is
    /// set here). Waits while the window is full.
    pub async fn send(&mut self, frame: BytesMut) -> Result<(), StreamClosed> {
        if let Some(mut previous) = self.held.replace(frame) {
            set_frame_flags(&mut previous, FLAG_MORE);
            self.queue(previous).await?;
        }
        Ok(())
    }

    /// Sends the last frame: the one held back, or `empty()` when the answer had none (an
    /// answer is at least one frame).
    pub async fn finish(mut self, empty: impl FnOnce() -> BytesMut) -> Result<(), StreamClosed> {
        let last = self.held.take().unwrap_or_else(empty);
        self.queue(last).await
    }

    async fn queue(&self, frame: BytesMut) -> Result<(), StreamClosed> {
        let slot = self
            .window
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        let bytes = Bytes::from_owner(Windowed { frame, _slot: slot });
        self.tx.send(bytes).await.map_err(|_| StreamClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, FrameCodec, Message, encode_frame_into};
    use tokio_util::codec::Decoder;

    fn frame(n: u64) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame_into(&mut b, 7, 0, &Message::Ping(n));
        b
    }

    fn decode(b: Bytes) -> Frame {
        FrameCodec::default()
            .decode(&mut BytesMut::from(&b[..]))
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn every_frame_but_the_last_carries_more() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut s = StreamSender::new(tx, 8);
        for n in 0..3 {
            s.send(frame(n)).await.unwrap();
        }
        s.finish(|| unreachable!()).await.unwrap();
        let frames: Vec<Frame> = std::iter::from_fn(|| rx.try_recv().ok().map(decode)).collect();
        let flags: Vec<u16> = frames.iter().map(|f| f.flags).collect();
        assert_eq!(flags, [FLAG_MORE, FLAG_MORE, 0]);
        let pings: Vec<Message> = frames.iter().map(|f| f.message().unwrap()).collect();
        assert_eq!(pings, (0..3).map(Message::Ping).collect::<Vec<_>>());
        assert!(frames.iter().all(|f| f.request_id == 7));
    }

    #[tokio::test]
    async fn an_empty_answer_is_one_frame() {
        let (tx, mut rx) = mpsc::channel(16);
        StreamSender::new(tx, 8).finish(|| frame(9)).await.unwrap();
        let f = decode(rx.try_recv().unwrap());
        assert_eq!((f.flags, f.message().unwrap()), (0, Message::Ping(9)));
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_producer_waits_while_its_window_is_queued() {
        // The queue itself has room for 64 frames; the window allows 2 of this answer.
        let (tx, mut rx) = mpsc::channel(64);
        let mut s = StreamSender::new(tx, 2);
        let producer = tokio::spawn(async move {
            for n in 0..10 {
                s.send(frame(n)).await.unwrap();
            }
            s.finish(|| unreachable!()).await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(rx.len(), 2, "no more than the window is queued");
        // The writer takes one (and drops its bytes once copied): the producer may queue one more.
        drop(rx.recv().await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(rx.len(), 2);
        let mut got = 1;
        while let Some(f) = rx.recv().await {
            drop(f);
            got += 1;
        }
        assert_eq!(got, 10);
        producer.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_ends_the_answer() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let mut s = StreamSender::new(tx, 2);
        s.send(frame(1)).await.unwrap(); // held back
        assert_eq!(s.send(frame(2)).await, Err(StreamClosed));
    }
}
