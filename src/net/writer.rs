//! The one socket writer of every connection: the SDK's, the peer links', the peer port's
//! answers and the client sessions'.
//!
//! Frames are queued on a bounded channel (so a peer that reads slowly slows its producers down
//! instead of growing a buffer); the writer gathers whatever is queued, up to about
//! [`WriterConfig::batch_bytes`], into one socket write, and lets the tasks that are ready to
//! run queue theirs first. One write (and one wake-up of the reader on the other side) for many
//! frames is what makes pipelined requests cheap.
//!
//! A connection may also write output of its own that is not queued frame by frame (the client
//! sessions' pushes): an [`Extra`] the writer asks for bytes whenever it says it has some.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StreamWriter;

/// A write buffer kept between writes never holds more than this: a burst's buffer is given
/// back, so thousands of mostly idle connections do not each keep their largest write.
const WRITE_BUF_KEEP: usize = 64 << 10;
/// Closing the socket (a TLS close, a flush) may wait on a peer that does not read; it gets this
/// long before the connection is simply dropped, so a closing connection never holds up the
/// shutdown of its node.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a writer writes.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Queued frames are gathered up to about this many bytes into one socket write.
    pub batch_bytes: usize,
    /// A write that does not complete within this ends the connection (a peer that stopped
    /// reading); `None` waits as long as the connection lives.
    pub write_timeout: Option<Duration>,
}

/// Output of a connection besides its queued frames.
pub trait Extra: Send {
    /// Completes when there is something to write. It races the frame queue, so it must be
    /// cancel-safe (a wake-up it has not returned yet must not be lost).
    fn ready(&mut self) -> impl Future<Output = ()> + Send;
    /// Appends what there is to write to `buf` (runs to completion: the queue waits meanwhile).
    fn fill(&mut self, buf: &mut BytesMut) -> impl Future<Output = ()> + Send;
}

/// No output besides the queued frames.
pub struct NoExtra;

impl Extra for NoExtra {
    async fn ready(&mut self) {
        std::future::pending().await
    }

    async fn fill(&mut self, _buf: &mut BytesMut) {}
}

/// Why a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// Everything queued was written and the queue closed.
    Drained,
    /// `stop` was cancelled.
    Stopped,
    /// A write failed (the connection is gone).
    Failed,
    /// The other side did not take a write within the write timeout (it stopped reading).
    TimedOut,
}

/// Writes the frames queued on `rx` (and `extra`'s output) to `wr` until `rx` is closed and
/// drained, a write fails or times out, or `stop` is cancelled (which also abandons a write in
/// progress); then shuts the writer down. Cancels `stop` on the way out, so the connection's
/// other half learns that writing has ended.
///
/// A queued frame is dropped as soon as its bytes are copied into the write buffer: a frame type
/// that carries a claim on a budget (the client sessions' queued bytes) gives it back then.
pub async fn run<F: AsRef<[u8]> + Send>(
    mut wr: StreamWriter,
    mut rx: mpsc::Receiver<F>,
    config: WriterConfig,
    stop: CancellationToken,
    mut extra: impl Extra,
) -> WriterEnd {
    let mut buf = BytesMut::new();
    let mut end = WriterEnd::Drained;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                end = WriterEnd::Stopped;
                break;
            }
            f = rx.recv() => match f {
                Some(first) => {
                    buf.extend_from_slice(first.as_ref());
                    drop(first);
                    gather_queued(&mut buf, &mut rx, config.batch_bytes).await;
                }
                None => break,
            },
            _ = extra.ready() => extra.fill(&mut buf).await,
        }
        if buf.is_empty() {
            continue;
        }
        let written = tokio::select! {
            _ = stop.cancelled() => Err(WriterEnd::Stopped),
            r = write_within(&mut wr, &buf, config.write_timeout) => r,
        };
        if let Err(e) = written {
            tracing::debug!(end = ?e, "write failed, timed out or was stopped; closing the connection");
            end = e;
            break;
        }
        recycle(&mut buf);
    }
    stop.cancel();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
    end
}

async fn write_within(
    wr: &mut StreamWriter,
    buf: &[u8],
    limit: Option<Duration>,
) -> Result<(), WriterEnd> {
    match limit {
        Some(limit) => match tokio::time::timeout(limit, wr.write_all(buf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriterEnd::Failed),
            Err(_) => Err(WriterEnd::TimedOut),
        },
        None => wr.write_all(buf).await.map_err(|_| WriterEnd::Failed),
    }
}

/// Empties a written buffer, and frees it if a burst grew it beyond [`WRITE_BUF_KEEP`].
fn recycle(buf: &mut BytesMut) {
    if buf.capacity() > WRITE_BUF_KEEP {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Appends the frames queued on `rx` to `buf` (up to about `limit` bytes), then lets the tasks
/// that are ready to run queue theirs too and appends those: one socket write (and one wake-up
/// of the reader on the other side) for all of them instead of one per frame. Costs a trip
/// through the scheduler when nothing else is ready.
async fn gather_queued<F: AsRef<[u8]>>(
    buf: &mut BytesMut,
    rx: &mut mpsc::Receiver<F>,
    limit: usize,
) {
    drain_into(buf, rx, limit);
    if buf.len() < limit {
        tokio::task::yield_now().await;
        drain_into(buf, rx, limit);
    }
}

/// Appends the frames already queued on `rx` to `buf` until it holds `limit` bytes.
fn drain_into<F: AsRef<[u8]>>(buf: &mut BytesMut, rx: &mut mpsc::Receiver<F>, limit: usize) {
    while buf.len() < limit {
        match rx.try_recv() {
            Ok(b) => buf.extend_from_slice(b.as_ref()),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, AsyncWrite};

    const CONFIG: WriterConfig = WriterConfig {
        batch_bytes: 1 << 20,
        write_timeout: None,
    };

    /// A stream that counts the writes made to it and keeps their bytes.
    #[derive(Clone, Default)]
    struct Counting {
        writes: Arc<AtomicUsize>,
        bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncRead for Counting {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_one_write() {
        let sink = Counting::default();
        let (_, wr) = super::super::split(Box::new(sink.clone()));
        let (tx, rx) = mpsc::channel(64);
        for i in 0..10u8 {
            tx.send(Bytes::from(vec![i; 3])).await.unwrap();
        }
        drop(tx);
        run(wr, rx, CONFIG, CancellationToken::new(), NoExtra).await;
        assert_eq!(sink.writes.load(Ordering::Relaxed), 1);
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(*sink.bytes.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn a_write_is_cut_at_the_batch_size() {
        let sink = Counting::default();
        let (_, wr) = super::super::split(Box::new(sink.clone()));
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..10 {
            tx.send(Bytes::from(vec![0u8; 100])).await.unwrap();
        }
        drop(tx);
        let config = WriterConfig {
            batch_bytes: 250,
            write_timeout: None,
        };
        run(wr, rx, config, CancellationToken::new(), NoExtra).await;
        // 300 + 300 + 300 + 100: a write stops gathering once it holds the batch size.
        assert_eq!(sink.writes.load(Ordering::Relaxed), 4);
        assert_eq!(sink.bytes.lock().unwrap().len(), 1000);
    }

    /// Extra output that has `n` chunks to give, one per wake-up.
    struct Chunks(usize);

    impl Extra for Chunks {
        async fn ready(&mut self) {
            if self.0 == 0 {
                std::future::pending::<()>().await;
            }
        }
        async fn fill(&mut self, buf: &mut BytesMut) {
            self.0 -= 1;
            buf.extend_from_slice(b"push");
        }
    }

    #[tokio::test]
    async fn extra_output_is_written_between_frames() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_, wr) = super::super::split(Box::new(server));
        let (tx, rx) = mpsc::channel(64);
        tx.send(Bytes::from_static(b"answer")).await.unwrap();
        let stop = CancellationToken::new();
        let writer = tokio::spawn(run(wr, rx, CONFIG, stop.clone(), Chunks(2)));
        let mut client = client;
        let mut got = vec![0u8; 14];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answerpushpush");
        drop(tx);
        writer.await.unwrap();
        assert!(stop.is_cancelled(), "the writer says it has ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_is_dropped_after_the_write_timeout() {
        let (_client, server) = tokio::io::duplex(16);
        let (_, wr) = super::super::split(Box::new(server));
        let (tx, rx) = mpsc::channel(4);
        tx.send(Bytes::from(vec![0u8; 1024])).await.unwrap();
        let config = WriterConfig {
            batch_bytes: 1 << 20,
            write_timeout: Some(Duration::from_secs(30)),
        };
        let stop = CancellationToken::new();
        // Ends by itself although the queue stays open: the write cannot complete.
        run(wr, rx, config, stop.clone(), NoExtra).await;
        assert!(stop.is_cancelled());
        drop(tx);
    }

    #[tokio::test]
    async fn stop_abandons_a_blocked_write() {
        let (_client, server) = tokio::io::duplex(16);
        let (_, wr) = super::super::split(Box::new(server));
        let (tx, rx) = mpsc::channel(4);
        tx.send(Bytes::from(vec![0u8; 1024])).await.unwrap();
        let stop = CancellationToken::new();
        let writer = tokio::spawn(run(wr, rx, CONFIG, stop.clone(), NoExtra));
        tokio::task::yield_now().await;
        stop.cancel();
        writer.await.unwrap();
        drop(tx);
    }
}
