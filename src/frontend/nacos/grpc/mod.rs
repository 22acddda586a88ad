//! The Nacos 2.x gRPC protocol. Every message, both ways, is a [`proto::Payload`]: a
//! [`proto::Metadata`] whose `type` names the request or response class, and a body holding that
//! class's JSON (see [`super::model::grpc`]). Two services carry them: `Request/request` (unary:
//! one request, one response) and `BiRequestStream/requestBiStream` (the connection's stream:
//! the client's setup and acks up, the server's pushes down).
//!
//! One HTTP/2 connection is one Nacos connection: the accept loop here wraps each accepted
//! socket so that every request carries its connection's id and the connection's end is seen
//! the moment hyper lets go of the socket, whatever the stream did.
//!
//! - [`proto`]: the prost messages and the tonic services, hand-written (no protoc).
//! - [`conn`]: one connection — its `api::Session`, setup state, published instances (one
//!   publication per service), subscriptions — and the registry of a node's connections.
//! - [`handler`]: the unary requests and the stream, translated into request API calls.
//! - [`push`]: the connection's push loop — full `ServiceInfo` snapshots, coalesced, acked.

pub mod conn;
pub mod handler;
pub mod proto;
pub mod push;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;
use tracing::{debug, error, warn};

use super::NacosSettings;
use super::auth::NacosAuth;
use crate::api::Api;
use crate::net::{BoxStream, Listener};
use conn::Registry;

/// HTTP/2 keep-alive pings on an idle connection: how a half-open connection (a client host
/// that vanished) is found without the client's help; the clients' own health checks come
/// every 5 s of idleness.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection (and lapses its instances).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent calls (streams) on one connection: a client runs a few at a time; the bound keeps
/// one connection from holding unbounded work.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// After the node's shutdown began, how long connections get to close on their own (GOAWAY,
/// the streams end) before they are cut.
const DRAIN: Duration = Duration::from_secs(1);

/// What every request of a connection carries (tonic puts it in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique on this node for the life of the process (never reused, unlike a port).
    pub id: u64,
    pub remote: SocketAddr,
}

/// An accepted socket as the gRPC server sees it: the connection's id for each request, a kill
/// switch (a cancelled token fails every read and write, so hyper drops the connection), a
/// signal that fires when hyper drops it. (The connection's slot is held by its task in the
/// accept loop, which lives until the connection is closed.)
pub struct NacosIo {
    stream: BoxStream,
    info: ConnInfo,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    _closed: DropGuard,
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl NacosIo {
    fn is_killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for NacosIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for NacosIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_killed(cx) {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for NacosIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepted connections waiting for the gRPC server to take them.
const ACCEPTED_WAITING_MAX: usize = 64;

/// Serves the gRPC protocol on `listener` (TLS when it is a TLS listener) until the node shuts
/// down.
pub(super) async fn serve(
    api: Api,
    auth: Arc<NacosAuth>,
    listener: Box<dyn Listener>,
    settings: NacosSettings,
    connections: Arc<AtomicU64>,
) {
    let node = api.node().clone();
    let registry = Registry::new(api.clone(), settings, connections);
    let (request, bi) = proto::services(Arc::new(handler::Handler::new(registry.clone(), auth)));
    let (accepted, mut incoming) = mpsc::channel(ACCEPTED_WAITING_MAX);
    node.tracker
        .spawn(accept(api.clone(), listener, registry.clone(), accepted));
    let incoming = futures_util::stream::poll_fn(move |cx| incoming.poll_recv(cx));
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        .add_service(request)
        .add_service(bi)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    let mut server = Box::pin(server);
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                error!(error = %e, "Nacos gRPC server failed");
            }
            return;
        }
        _ = node.shutdown.cancelled() => {}
    }
    // GOAWAY to every client (they reconnect to another node) and end the streams; cut what is
    // still open after a moment.
    stop.cancel();
    registry.close_all(true).await;
    if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
        registry.kill_all();
        if let Err(e) = server.await {
            warn!(error = %e, "Nacos gRPC server stopped with an error");
        }
    }
}

/// Accepts connections (the node's one accept loop: at most `max_connections` at once, the TLS
/// handshake in each connection's task), registers each and hands it to the gRPC server, then
/// waits for hyper to let go of it and ends its session.
async fn accept(
    api: Api,
    listener: Box<dyn Listener>,
    registry: Arc<Registry>,
    accepted: mpsc::Sender<io::Result<NacosIo>>,
) {
    let node = api.node().clone();
    crate::net::accept_loop(
        "Nacos gRPC",
        &*listener,
        node.config.max_connections,
        node.shutdown.clone(),
        &node.tracker,
        move |stream, remote| {
            let registry = registry.clone();
            let accepted = accepted.clone();
            async move {
                let (conn, kill, closed) = registry.open(remote);
                debug!(%remote, conn = conn.id(), "Nacos gRPC connection accepted");
                let io = NacosIo {
                    stream,
                    info: ConnInfo {
                        id: conn.id(),
                        remote,
                    },
                    kill: Box::pin(kill.cancelled_owned()),
                    _closed: closed.clone().drop_guard(),
                };
                // The server has stopped taking connections: this one ends here (the guard in
                // the dropped io cancels `closed`).
                let _ = accepted.send(Ok(io)).await;
                drop(accepted);
                // The connection's end (hyper dropped the socket) ends its session.
                closed.cancelled().await;
                registry.close(&conn, false).await;
            }
        },
    )
    .await
}
