//! The transport seam of `distro::net` on turmoil's simulated TCP: the real server and SDK code
//! runs unchanged on simulated hosts.

use std::io;
use std::net::SocketAddr;

use distro::net::{BoxStream, Dialer, Listener};
use futures_util::future::BoxFuture;

/// A simulated listening socket.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((Box::new(s) as BoxStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Opens simulated connections; `host:port` names resolve through turmoil's DNS.
pub struct SimDialer;

impl Dialer for SimDialer {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}
