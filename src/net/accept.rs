//! The one accept loop, used by the client listener and the peer listener of a node.
//!
//! It accepts while fewer than its cap of connections are open (beyond it, new connections wait
//! in the listen backlog until one closes, instead of each costing a task and buffers), serves
//! each connection in a task of the node's tracker (so a shutdown waits for it), and backs off on
//! accept errors (out of file descriptors, ...) instead of spinning. A listener's handshake
//! (TLS, [`Listener::handshake`]) runs in the connection's task too, before it is served: a
//! connection that fails it is dropped and logged, and never reaches the protocol code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use super::{BoxStream, Listener};

/// First pause after a failed accept; it doubles with every failure in a row.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(1);
/// Longest pause after failed accepts: an exhausted resource is retried at least once a second.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` until `shutdown` is cancelled, at most `max_connections`
/// open at once, and runs `serve` for each (after the listener's handshake) in a task of
/// `tracker`. `what` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: &dyn Listener,
    max_connections: usize,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    serve: F,
) where
    F: Fn(BoxStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                let handshake = listener.handshake(stream);
                let serve = serve.clone();
                tracker.spawn(async move {
                    match handshake.await {
                        Ok(stream) => serve(stream, peer).await,
                        Err(e) => info!(listener = what, %peer, error = %e, "handshake failed"),
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                error!(listener = what, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use std::io;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    /// A listener fed by a channel: each item is an accept result.
    struct Fed {
        rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<io::Result<BoxStream>>>,
        accepts: AtomicUsize,
    }

    impl Listener for Fed {
        fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
            Box::pin(async move {
                let next = self.rx.lock().await.recv().await;
                self.accepts.fetch_add(1, Ordering::Relaxed);
                match next {
                    Some(r) => r.map(|s| (s, "127.0.0.1:1".parse().unwrap())),
                    None => std::future::pending().await,
                }
            })
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:0".parse().unwrap())
        }
    }

    fn fed() -> (Arc<Fed>, mpsc::UnboundedSender<io::Result<BoxStream>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let l = Arc::new(Fed {
            rx: tokio::sync::Mutex::new(rx),
            accepts: AtomicUsize::new(0),
        });
        (l, tx)
    }

    fn stream() -> BoxStream {
        Box::new(tokio::io::duplex(64).0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_cap_are_served_at_once() {
        let (listener, feed) = fed();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Each connection is served until its release is sent.
        let releases: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Default::default();
        let serving = Arc::new(AtomicUsize::new(0));
        let (l, s, t, r, n) = (
            listener.clone(),
            shutdown.clone(),
            tracker.clone(),
            releases.clone(),
            serving.clone(),
        );
        let looping = tokio::spawn(async move {
            accept_loop("test", &*l, 2, s, &t, move |_, _| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                r.lock().unwrap().push(tx);
                let n = n.clone();
                n.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = rx.await;
                    n.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
        });
        for _ in 0..3 {
            feed.send(Ok(stream())).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(serving.load(Ordering::SeqCst), 2);
        // The third waits in the backlog: the loop does not even accept it.
        assert_eq!(listener.accepts.load(Ordering::Relaxed), 2);
        let first = releases.lock().unwrap().remove(0);
        first.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(listener.accepts.load(Ordering::Relaxed), 3);
        assert_eq!(serving.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        looping.await.unwrap();
        // The connections still open are the tracker's: a shutdown waits for them.
        tracker.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), tracker.wait())
                .await
                .is_err()
        );
        for r in releases.lock().unwrap().drain(..) {
            r.send(()).unwrap();
        }
        tracker.wait().await;
        assert_eq!(serving.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_the_loop_keeps_serving() {
        let (listener, feed) = fed();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let served = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            feed.send(Err(io::Error::other("out of file descriptors")))
                .unwrap();
        }
        feed.send(Ok(stream())).unwrap();
        let (l, s, t, n) = (
            listener.clone(),
            shutdown.clone(),
            tracker.clone(),
            served.clone(),
        );
        let started = tokio::time::Instant::now();
        let looping = tokio::spawn(async move {
            accept_loop("test", &*l, 10, s, &t, move |_, _| {
                n.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .await
        });
        while served.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // 1 + 2 + 4 + 8 + 16 ms of backoff before the sixth accept.
        assert!(started.elapsed() >= Duration::from_millis(31));
        assert!(started.elapsed() < Duration::from_millis(100));
        shutdown.cancel();
        looping.await.unwrap();
    }
}
