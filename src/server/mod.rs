//! `distrod`'s serving side: binds the listeners of a node, runs its front ends and background
//! duties, and stops them all within a grace period on shutdown.
//!
//! The node's shared state is [`crate::node::Node`]; requests reach it through
//! [`crate::api::Api`], which the front ends ([`crate::frontend`]) call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Api;
use crate::clock::Clock;
use crate::config::Config;
use crate::frontend::nacos::{NacosListeners, NacosSettings};
use crate::net::tls::{ALPN_H2, ALPN_HTTP1, TlsDialer, maybe_tls};
use crate::net::{Dialer, Listener, NodeTls, TlsError};
use crate::node::Node;

/// How long shutdown waits for connections and tasks to finish and flush.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the admin port, which stops last, may take to finish the requests in progress.
const ADMIN_STOP_GRACE: Duration = Duration::from_secs(1);

/// A bound client listener (and, in a cluster, peer listener; the admin port's listener where
/// there is one; with the Nacos front end, its listeners) and the node behind them.
pub struct Server {
    node: Arc<Node>,
    listener: Box<dyn Listener>,
    peer_listener: Option<Box<dyn Listener>>,
    admin_listener: Option<tokio::net::TcpListener>,
    nacos: Option<(NacosListeners, NacosSettings)>,
    tls: Option<ServerTls>,
}

/// The TLS acceptors of a node's ports, made once from its [`NodeTls`].
struct ServerTls {
    /// The client port: the node's certificate, no client certificate.
    client: tokio_rustls::TlsAcceptor,
    /// The admin and Nacos HTTP ports (ALPN http/1.1).
    http1: tokio_rustls::TlsAcceptor,
    /// The Nacos gRPC port (ALPN h2, which gRPC clients insist on).
    h2: tokio_rustls::TlsAcceptor,
    /// The peer port: mutual TLS against the cluster's CA (a cluster only).
    peer: Option<tokio_rustls::TlsAcceptor>,
}

impl ServerTls {
    fn new(tls: &NodeTls, clustered: bool) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            client: tls.client_port(&[])?,
            http1: tls.client_port(&[ALPN_HTTP1])?,
            h2: tls.client_port(&[ALPN_H2])?,
            peer: if clustered {
                Some(tls.peer_port()?)
            } else {
                None
            },
        })
    }
}

impl Server {
    /// Binds the client port of `config.listen` (port 0 picks a free port), in a cluster the
    /// peer port of `config.peer_listen`, and the admin port of `config.http` unless it is off;
    /// with `tls_cert`, reads the node's TLS material and serves every port with TLS. An error
    /// names the address that could not be bound or the file that could not be used.
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        let tls = config.tls()?;
        let bind = |addr: SocketAddr, what: &'static str| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
            })
        };
        let listener = bind(config.listen, "client port").await?;
        let peer_listener = if config.is_clustered() {
            Some(bind(config.peer_listen, "peer port").await?)
        } else {
            None
        };
        let admin = match config.http {
            Some(addr) => Some(bind(addr, "admin port").await?),
            None => None,
        };
        let nacos = match config.nacos_listen {
            Some(addr) => Some(NacosListeners::bind(addr).await?),
            None => None,
        };
        let mut server = Server::from_listeners_tls(config, listener, peer_listener, tls)?;
        if let Some(l) = admin {
            server = server.with_admin(l);
        }
        if let Some(l) = nacos {
            server = server.with_nacos(l, NacosSettings::default());
        }
        Ok(server)
    }

    /// Serves the admin HTTP port ([`crate::frontend::admin`]) on `listener` too.
    pub fn with_admin(mut self, listener: tokio::net::TcpListener) -> Server {
        self.admin_listener = Some(listener);
        self
    }

    /// Where the admin port listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
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
        Server::from_listeners_tls(config, listener, peer_listener, None)
            .expect("no TLS, nothing to fail")
    }

    /// [`Server::from_listeners`], serving every port with TLS when `tls` is given: the client,
    /// admin and Nacos ports with the node's certificate, the peer port and links with mutual
    /// TLS (which needs the cluster's CA in `tls`).
    pub fn from_listeners_tls(
        config: Config,
        listener: tokio::net::TcpListener,
        peer_listener: Option<tokio::net::TcpListener>,
        tls: Option<NodeTls>,
    ) -> Result<Server, TlsError> {
        let clustered = config.is_clustered();
        let acceptors = tls
            .as_ref()
            .map(|t| ServerTls::new(t, clustered))
            .transpose()?;
        let dialer = match &tls {
            Some(t) if clustered => Arc::new(TlsDialer::new(crate::net::tcp(), t.peer_links()?)),
            _ => crate::net::tcp(),
        };
        let mut server = Server::with_transport(
            config,
            Clock::system(),
            Box::new(listener),
            peer_listener.map(|l| Box::new(l) as Box<dyn Listener>),
            dialer,
        );
        server.tls = acceptors;
        Ok(server)
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
            admin_listener: None,
            nacos: None,
            tls: None,
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

    /// Serves until `node.shutdown` is cancelled, then lets connections flush and returns
    /// within [`SHUTDOWN_GRACE`]. New connections stop already when a graceful stop begins
    /// (`node.draining`, see [`Node::stop_gracefully`]).
    pub async fn run(self) {
        let node = self.node;
        let ports = [
            ("client", self.listener.local_addr().ok()),
            (
                "admin",
                self.admin_listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok()),
            ),
            ("Nacos", self.nacos.as_ref().map(|(l, _)| l.http_addr())),
        ];
        for (port, addr) in ports {
            if let Some(addr) = addr
                && open_to_the_network(addr, &node)
            {
                warn!(
                    listen = %addr,
                    "the {port} port listens beyond loopback and no token file is set: anyone who \
                     reaches it may register, deregister and read anything (docs/security.md)"
                );
            }
        }
        node.tracker.spawn(node.clone().lease_duty());
        let api = Api::new(node.clone());
        let tls = self.tls;
        let acceptor = |pick: fn(&ServerTls) -> Option<&tokio_rustls::TlsAcceptor>| {
            tls.as_ref().and_then(pick).cloned()
        };
        if let (Some(c), Some(l)) = (&node.cluster, self.peer_listener) {
            c.start(maybe_tls(l, acceptor(|t| t.peer.as_ref())));
        }
        // The admin port outlives the rest of the node: while it stops, `/ready` answers 503
        // (so that a load balancer or Kubernetes takes it out of rotation) and `/metrics` still
        // answers.
        let http1 = acceptor(|t| Some(&t.http1));
        let admin = self.admin_listener.map(|l| {
            let stop = CancellationToken::new();
            let l = maybe_tls(Box::new(l), http1.clone());
            let task = tokio::spawn(crate::frontend::admin::serve(api.clone(), l, stop.clone()));
            (stop, task)
        });
        if let Some((listeners, settings)) = self.nacos {
            node.tracker.spawn(crate::frontend::nacos::serve(
                api.clone(),
                maybe_tls(Box::new(listeners.http), http1),
                maybe_tls(Box::new(listeners.grpc), acceptor(|t| Some(&t.h2))),
                settings,
            ));
        }
        let listener = maybe_tls(self.listener, acceptor(|t| Some(&t.client)));
        let native = api.clone();
        crate::net::accept_loop(
            "client",
            &*listener,
            node.config.max_connections,
            node.draining.clone(),
            &node.tracker,
            move |stream, peer| crate::frontend::native::serve(native.clone(), stream, peer),
        )
        .await;
        drop(listener);
        // A graceful stop takes new connections no more, then leaves the cluster: the client
        // sessions keep being served until the shutdown that follows.
        node.shutdown.cancelled().await;
        node.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, node.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace elapsed with tasks still running");
        }
        if let Some((stop, task)) = admin {
            stop.cancel();
            if tokio::time::timeout(ADMIN_STOP_GRACE, task).await.is_err() {
                warn!("admin port did not stop within its grace");
            }
        }
        info!("node stopped");
    }

    /// Starts serving in the background; the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let admin_addr = self.admin_addr();
        let nacos_addr = self.nacos_addr();
        let node = self.node.clone();
        let task = tokio::spawn(self.run());
        ServerHandle {
            addr,
            admin_addr,
            nacos_addr,
            node,
            task,
        }
    }
}

/// A server running in the background (tests, the bench's in-process mode).
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The admin port's address, if it serves one.
    pub admin_addr: Option<SocketAddr>,
    /// The Nacos HTTP API's address (gRPC at its port + 1000), when it is served.
    pub nacos_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops the server at once (peers notice by their failure detector, as after a crash),
    /// and waits for it to finish.
    pub async fn stop(self) {
        self.node.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Stops the server gracefully ([`Node::stop_gracefully`]: it leaves the cluster first),
    /// and waits for it to finish.
    pub async fn stop_gracefully(self) {
        self.node.stop_gracefully().await;
        let _ = self.task.await;
    }
}

/// Whether a listener at `addr` that serves clients (native, Nacos or admin) serves anyone who
/// reaches it: not loopback, and no token file.
fn open_to_the_network(addr: SocketAddr, node: &Node) -> bool {
    !addr.ip().is_loopback() && !node.tokens.is_on()
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
