//! The transport seam. Production runs on tokio's TCP; the deterministic simulation (and the
//! fuzz targets) plug in their own streams. Everything above this module sees only
//! [`BoxStream`], [`Listener`] and [`Dialer`], so no protocol code depends on a simulator, and a
//! layer such as TLS wraps the streams here (a `Listener` or `Dialer` that hands out wrapped
//! streams) without any protocol code noticing.

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

    /// What a connection goes through before it is served: nothing for plain TCP, the server
    /// side of a TLS handshake for [`super::tls::TlsListener`]. The accept loop runs it in the
    /// connection's own task, so a slow handshake holds up no one else.
    fn handshake(&self, stream: BoxStream) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(std::future::ready(Ok(stream)))
    }
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
