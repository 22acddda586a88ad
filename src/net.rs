//! The transport seam. Production runs on tokio's TCP; the deterministic simulation (and the
//! fuzz targets) plug in their own streams. Everything above this module sees only
//! [`BoxStream`], [`Listener`] and [`Dialer`], so no protocol code depends on a simulator.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

/// A bidirectional byte stream (a TCP connection, a simulated one, an in-memory pipe).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;
pub type StreamReader = ReadHalf<BoxStream>;
pub type StreamWriter = WriteHalf<BoxStream>;

/// Accepts incoming connections.
pub trait Listener: Send + Sync + 'static {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Opens outgoing connections to `host:port` addresses.
pub trait Dialer: Send + Sync + 'static {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<BoxStream>>;
}

/// tokio's TCP: connections with Nagle off (requests are small and latency matters).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Dialer for Tcp {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxStream)
        })
    }
}

impl Listener for tokio::net::TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, peer) = tokio::net::TcpListener::accept(self).await?;
            let _ = s.set_nodelay(true);
            Ok((Box::new(s) as BoxStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

/// The production dialer.
pub fn tcp() -> Arc<dyn Dialer> {
    Arc::new(Tcp)
}

/// Splits a stream into halves that can live in different tasks.
pub fn split(s: BoxStream) -> (StreamReader, StreamWriter) {
    tokio::io::split(s)
}

impl std::fmt::Debug for dyn Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

/// Writes the frames queued on `rx` to `wr`, gathering whatever is already queued (up to about
/// `batch_bytes`) into one socket write, until `rx` is closed and drained, a write fails, or
/// `stop` is cancelled; then shuts the writer down. Cancels `stop` on the way out, so the
/// connection's other half learns that writing has ended.
pub async fn write_frames(
    mut wr: StreamWriter,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    batch_bytes: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            f = rx.recv() => f,
        };
        let Some(first) = first else { break };
        buf.extend_from_slice(&first);
        gather_queued(&mut buf, &mut rx, batch_bytes).await;
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        recycle_write_buf(&mut buf);
    }
    stop.cancel();
    let _ = wr.shutdown().await;
}

/// A write buffer kept between writes never holds more than this: a burst's buffer is given
/// back, so thousands of mostly idle connections do not each keep their largest write.
const WRITE_BUF_KEEP: usize = 64 << 10;

/// Empties a written buffer, and frees it if a burst grew it beyond [`WRITE_BUF_KEEP`].
pub(crate) fn recycle_write_buf(buf: &mut bytes::BytesMut) {
    if buf.capacity() > WRITE_BUF_KEEP {
        *buf = bytes::BytesMut::new();
    } else {
        buf.clear();
    }
}

/// Appends the frames queued on `rx` to `buf` (up to about `limit` bytes), then lets the tasks
/// that are ready to run queue theirs too and appends those: one socket write (and one wake-up
/// of the reader on the other side) for all of them instead of one per frame. Costs a trip
/// through the scheduler when nothing else is ready.
pub(crate) async fn gather_queued(
    buf: &mut bytes::BytesMut,
    rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    limit: usize,
) {
    drain_into(buf, rx, limit);
    if buf.len() < limit {
        tokio::task::yield_now().await;
        drain_into(buf, rx, limit);
    }
}

/// Appends the frames already queued on `rx` to `buf` until it holds `limit` bytes.
fn drain_into(
    buf: &mut bytes::BytesMut,
    rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    limit: usize,
) {
    while buf.len() < limit {
        match rx.try_recv() {
            Ok(b) => buf.extend_from_slice(&b),
            Err(_) => break,
        }
    }
}
