//! `distrod`'s serving side: binds the listeners of a node, runs its front ends and background
//! duties, and stops them all within a grace period on shutdown.
//!
//! The node's shared state is [`crate::node::Node`]; requests reach it through
//! [`crate::api::Api`], which the front ends ([`crate::frontend`]) call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::api::Api;
use crate::clock::Clock;
use crate::config::Config;
use crate::net::{Dialer, Listener};
use crate::node::Node;

/// How long shutdown waits for connections and tasks to finish and flush.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound client listener (and, in a cluster, peer listener) and the node behind them.
pub struct Server {
    node: Arc<Node>,
    listener: Box<dyn Listener>,
    peer_listener: Option<Box<dyn Listener>>,
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
        Ok(Server::from_listeners(config, listener, peer_listener))
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
        crate::net::accept_loop(
            "client",
            &*self.listener,
            node.config.max_connections,
            node.shutdown.clone(),
            &node.tracker,
            |stream, peer| crate::frontend::native::serve(api.clone(), stream, peer),
        )
        .await;
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
        let node = self.node.clone();
        let task = tokio::spawn(self.run());
        ServerHandle { addr, node, task }
    }
}

/// A server running in the background (tests, the bench's in-process mode).
pub struct ServerHandle {
    pub addr: SocketAddr,
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
