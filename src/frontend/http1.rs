//! One HTTP/1.1 connection of the HTTP front ends (the admin port and the Nacos HTTP API),
//! served by hyper over whatever stream the accept loop handed over (TCP, or TLS on it): a
//! bound on the request head and the time it may take to arrive, and a graceful close (the
//! request in progress finishes) when the front end stops.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::net::BoxStream;

/// A connection must deliver a request's head within this long, also while it idles between
/// requests (hyper starts the clock when it waits for a head): a client that sends nothing, or
/// a byte at a time, does not keep its connection slot for ever. The clients under test send
/// requests at least every few seconds while they work, and reconnect when they need to.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on one connection until the client closes it or `stop` is cancelled; a
/// request head over `head_bytes_max` is answered 431. `what` names the front end in logs.
pub async fn serve(
    what: &'static str,
    app: Router,
    stream: BoxStream,
    peer: SocketAddr,
    head_bytes_max: usize,
    stop: CancellationToken,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEAD_TIMEOUT)
        .max_buf_size(head_bytes_max);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(front_end = what, %peer, error = %e, "HTTP connection ended with an error");
    }
}
