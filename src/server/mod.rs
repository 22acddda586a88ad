//! `distrod`'s serving side: binds the listeners of a node, runs its front ends and background
//! duties, and stops them all within a grace period on shutdown.
//!
//! The node's shared state is [`crate::node::Node`]; requests reach it through
//! [`crate::api::Api`], which the front ends ([`crate::frontend`]) call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::api::Api;
use crate::clock::Clock;
use crate::config::Config;
use crate::frontend::nacos::{NacosListeners, NacosSettings};
use crate::net::{Dialer, Listener};
use crate::node::Node;

/// How long shutdown waits for connections and tasks to finish and flush.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound client listener (and, in a cluster, peer listener; with the Nacos front end, its
/// listeners) and the node behind them.
pub struct Server {
    node: Arc<Node>,
    listener: Box<dyn Listener>,
    peer_listener: Option<Box<dyn Listener>>,
    nacos: Option<(NacosListeners, NacosSettings)>,
}

impl Server {
    /// Binds the client port of `config.listen` (port 0 picks a free port) and, in a cluster,
    /// the peer port of `config.peer_listen`.
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let peer_listener = if config.is_clustered() {
            Some(tokio::net::TcpListener::bind(config.peer_listen).await?)
        } else {
            None
        };
        let nacos = match config.nacos_listen {
            Some(addr) => Some(NacosListeners::bind(addr).await?),
            None => None,
        };
        let server = Server::from_listeners(config, listener, peer_listener);
        Ok(match nacos {
            Some(l) => server.with_nacos(l, NacosSettings::default()),
            None => server,
        })
    }

    /// Serves the Nacos HTTP and gRPC APIs on `listeners` too (`Server::bind` does this when
    /// `nacos_listen` is set; tests bind their own).
    pub fn with_nacos(mut self, listeners: NacosListeners, settings: NacosSettings) -> Server {
        self.nacos = Some((listeners, settings));
        self
    }

    /// The Nacos HTTP API's address, when it is served.
    pub fn nacos_addr(&self) -> Option<SocketAddr> {
        self.nacos.as_ref().map(|(l, _)| l.http_addr())
    }

    /// A server on listeners the caller bound (tests bind port 0 first to learn the peer
    /// addresses of every member). `config.peer_listen` must be the peer listener's address.
    pub fn from_listeners(
        config: Config,
        listener: tokio::net::TcpListener,
        peer_listener: Option<tokio::net::TcpListener>,
    ) -> Server {
        Server::with_transport(
            config,
            Clock::system(),
            Box::new(listener),
            peer_listener.map(|l| Box::new(l) as Box<dyn Listener>),
            crate::net::tcp(),
        )
    }

    /// A server on any transport, with an injected clock: the simulation's entry point.
    pub fn with_transport(
        config: Config,
        clock: Clock,
        listener: Box<dyn Listener>,
        peer_listener: Option<Box<dyn Listener>>,
        dialer: Arc<dyn Dialer>,
    ) -> Server {
        Server {
            node: Node::with_dialer(config, clock, dialer),
            listener,
            peer_listener,
            nacos: None,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `node.shutdown` is cancelled, then stops accepting, lets connections flush
    /// and returns within [`SHUTDOWN_GRACE`].
    pub async fn run(self) {
        let node = self.node;
        node.tracker.spawn(node.clone().lease_duty());
        let api = Api::new(node.clone());
        if let (Some(c), Some(l)) = (&node.cluster, self.peer_listener) {
            c.start(l);
        }
        if let Some((listeners, settings)) = self.nacos {
            node.tracker.spawn(crate::frontend::nacos::serve(
                api.clone(),
                listeners,
                settings,
            ));
        }
        accept_loop(&api, self.listener).await;
        node.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, node.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace elapsed with tasks still running");
        }
        info!("node stopped");
    }

    /// Starts serving in the background; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let nacos_addr = self.nacos_addr();
        let node = self.node.clone();
        let task = tokio::spawn(self.run());
        ServerHandle {
            addr,
            nacos_addr,
            node,
            task,
        }
    }
}

/// A server running in the background (tests, the bench's in-process mode).
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The Nacos HTTP API's address (gRPC at its port + 1000), when it is served.
    pub nacos_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.node.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Accepts connections while slots are free; backs off on accept errors (out of file
/// descriptors, ...) instead of spinning.
async fn accept_loop(api: &Api, listener: Box<dyn Listener>) {
    let node = api.node();
    let slots = Arc::new(Semaphore::new(node.config.max_connections));
    let mut backoff_ms = 1u64;
    loop {
        let permit = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff_ms = 1;
                let api = api.clone();
                node.tracker.spawn(async move {
                    crate::frontend::native::serve(api, stream, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                error!(error = %e, backoff_ms, "accept failed");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(1_000);
            }
        }
    }
}
