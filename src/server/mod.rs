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
        if let Ok(addr) = self.listener.local_addr()
            && open_to_the_network(addr, &node)
        {
            warn!(
                listen = %addr,
                "the client port listens beyond loopback and no token file is set: anyone who \
                 reaches it may register, deregister and read anything (docs/security.md)"
            );
        }
        node.tracker.spawn(node.clone().lease_duty());
        let api = Api::new(node.clone());
        if let (Some(c), Some(l)) = (&node.cluster, self.peer_listener) {
            c.start(l);
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

/// Whether a client listener at `addr` serves anyone who reaches it: not loopback, and no
/// token file.
fn open_to_the_network(addr: SocketAddr, node: &Node) -> bool {
    !addr.ip().is_loopback() && !node.tokens.is_on()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenSet;
    use crate::clock::Clock;

    #[test]
    fn a_client_port_beyond_loopback_without_tokens_is_open_to_the_network() {
        let node = Node::new(Config::default(), Clock::system());
        let lan: SocketAddr = "0.0.0.0:8858".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8858".parse().unwrap();
        let local6: SocketAddr = "[::1]:8858".parse().unwrap();
        assert!(open_to_the_network(lan, &node));
        assert!(!open_to_the_network(local, &node));
        assert!(!open_to_the_network(local6, &node));
        node.tokens.install(TokenSet::default());
        assert!(!open_to_the_network(lan, &node));
    }
}
