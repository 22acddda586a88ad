//! The Nacos front end: the naming part of Nacos's HTTP API (v1 and v2) and of its 2.x gRPC
//! protocol, so that applications using the published Nacos clients can use this registry by
//! changing a server address. `docs/nacos.md` is the contract: every endpoint, request type,
//! parameter, answer and error as the clients rely on them.
//!
//! - [`model`]: the Nacos shapes as plain serde types — HTTP parameters, v1 answers and the v2
//!   envelope, gRPC request and response bodies — and Nacos's naming rules (defaults,
//!   `group@@service` names, lenient booleans, metadata strings). The request API never sees
//!   these types; the front end translates them.
//! - [`auth`]: who a request's caller is — the login, the accessToken, the credentials each
//!   request carries (`docs/security.md` §4.1).
//! - [`convert`]: those shapes into the model's types (keys, instances, the lease from the
//!   `preserved.*` metadata) and snapshots back into Nacos's `ServiceInfo`.
//! - [`error`]: [`error::NacosError`], every cause of a failed request, and its one mapping to
//!   HTTP statuses, v2 codes and gRPC error codes.
//! - [`http`]: the HTTP API (axum routes on hyper connections): lease-bound instances, beats.
//! - [`grpc`]: the gRPC protocol (tonic): the connection registry, the setup sequence, the
//!   requests, connection-bound instances, subscriptions and pushes.
//!
//! [`serve`] runs both on the listeners of [`NacosListeners::bind`]: HTTP at the configured
//! address, gRPC at its port + 1000, where every Nacos client looks for it.

pub mod auth;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod http;
pub mod model;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::Api;
use crate::net::Listener;

/// The gRPC port is the HTTP port plus this (every Nacos 2.x client derives it so); defined
/// with the settings, which check that the port exists.
pub use crate::config::NACOS_GRPC_PORT_OFFSET as GRPC_PORT_OFFSET;

/// How long a gRPC request on a connection that has not sent its `ConnectionSetupRequest` yet
/// waits for it before it is answered 301 "Connection is unregistered." (the Rust client sends
/// requests before its setup has been processed; see docs/nacos.md §6.2).
pub const SETUP_WAIT: Duration = Duration::from_secs(3);
/// How long a push waits for the client's ack before the next push of the same service may go
/// (Nacos: 3 s).
pub const PUSH_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection that leaves a push unacknowledged, or its stream's send queue full, for this
/// long is closed: it does not read what it is sent. Ten ack timeouts: a slow client is not
/// dropped for one late ack. The client reconnects and subscribes again.
pub const PUSH_STALL: Duration = Duration::from_secs(30);

/// The timing of the gRPC protocol; [`Default`] is the production setting (tests shorten it).
#[derive(Debug, Clone)]
pub struct NacosSettings {
    pub setup_wait: Duration,
    pub push_ack_timeout: Duration,
    pub push_stall: Duration,
}

impl Default for NacosSettings {
    fn default() -> NacosSettings {
        NacosSettings {
            setup_wait: SETUP_WAIT,
            push_ack_timeout: PUSH_ACK_TIMEOUT,
            push_stall: PUSH_STALL,
        }
    }
}

/// The two listeners of the Nacos front end.
pub struct NacosListeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

/// Tries at binding a free HTTP port whose port + 1000 is free too, when port 0 was asked for.
const BIND_TRIES: usize = 20;

impl NacosListeners {
    /// Binds the HTTP API at `addr` and the gRPC protocol at its port + 1000. Port 0 picks a
    /// free HTTP port whose gRPC port is free as well.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<NacosListeners> {
        let grpc_addr = |http: SocketAddr| -> std::io::Result<SocketAddr> {
            let port = http.port().checked_add(GRPC_PORT_OFFSET).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "Nacos port {} leaves no room for its gRPC port + 1000",
                        http.port()
                    ),
                )
            })?;
            Ok(SocketAddr::new(http.ip(), port))
        };
        // The error names the address: `distrod` reports it as it is.
        let at = |a: SocketAddr, what: &'static str| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what} {a}: {e}"))
        };
        if addr.port() != 0 {
            let http = TcpListener::bind(addr)
                .await
                .map_err(at(addr, "Nacos HTTP"))?;
            let g = grpc_addr(addr)?;
            let grpc = TcpListener::bind(g).await.map_err(at(g, "Nacos gRPC"))?;
            return Ok(NacosListeners { http, grpc });
        }
        let mut last = None;
        for _ in 0..BIND_TRIES {
            let http = TcpListener::bind(addr).await?;
            let bound = http.local_addr()?;
            match grpc_addr(bound) {
                Ok(g) => match TcpListener::bind(g).await {
                    Ok(grpc) => return Ok(NacosListeners { http, grpc }),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    /// The HTTP address (the one clients are configured with).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }
}

/// Serves the Nacos HTTP API on `http` and the gRPC protocol on `grpc` (the listeners of
/// [`NacosListeners`], each wrapped in TLS where the node has a certificate) until the node
/// shuts down. Both run as tasks of the node's tracker; this returns once both have stopped.
pub async fn serve(
    api: Api,
    http: Box<dyn Listener>,
    grpc: Box<dyn Listener>,
    settings: NacosSettings,
) {
    let node = api.node().clone();
    let connections = Arc::new(AtomicU64::new(0));
    let auth = auth::NacosAuth::new(api.clone());
    let http = node.tracker.spawn(http::serve(
        api.clone(),
        auth.clone(),
        http,
        connections.clone(),
    ));
    let grpc = node
        .tracker
        .spawn(grpc::serve(api, auth, grpc, settings, connections));
    let _ = tokio::join!(http, grpc);
}
