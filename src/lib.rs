//! Distro: a clustered, available-under-partition registry for ephemeral service instances.
//!
//! With `default-features = false` only the SDK and what it needs are built (`client`, `model`,
//! `wire`, `net`, `clock`, `hash`, `ownership`); the `server` feature adds the node.
//!
//! Module map:
//! - [`model`]: the data model every part shares — names, keys, instances, leases, versions,
//!   limits and the validation rules; the canonical key bytes and hashes.
//! - [`wire`]: the binary protocol — frames, message bodies, the codec (`wire-spec.md`).
//! - [`store`]: the in-memory registry — sharded records with versions, tombstones, leases,
//!   per-service snapshots, the change logs delta pushes are made from, and bucket digests.
//! - [`ownership`]: which node is responsible for an instance (rendezvous hashing, xxh3).
//! - [`clock`]: the millisecond clock (through tokio, so simulated time works) and the hybrid
//!   logical clock that versions every write.
//! - [`cluster`]: the Distro protocol between nodes — its decisions in a sans-IO engine
//!   (membership and failure detection, handoff, digest verify and pull, load and readiness,
//!   the peer handshake, graceful leaves) and the async driver that runs them over the links;
//!   forwarding and batched sync; the member list changing at run time.
//! - [`metrics`]: the node's metrics — one registry, counted where the work happens (it knows
//!   no part above it: the parts report to it), exposed by the admin port in the Prometheus
//!   text format.
//! - [`node`]: what one node is made of (store, cluster, subscriptions and their push queues,
//!   readiness, shutdown, task tracker), its lease duty, and what its metrics read at a scrape.
//! - [`auth`]: who may do what — client tokens and their rights per namespace, the token file
//!   (`--token-file`), reloads (`docs/security.md`).
//! - [`api`]: the request API — the one door of every front end: register, deregister, beat,
//!   query, list, subscribe, owner, status; model types in, `Rejection` out.
//! - [`frontend`]: the protocols clients speak, each translating to the request API: the
//!   binary protocol's client sessions, the Nacos HTTP and gRPC APIs (`docs/nacos.md`), the
//!   admin HTTP port (metrics, probes, JSON, console).
//! - [`server`]: `distrod`'s serving side — listeners, front ends and duties, shutdown.
//! - [`client`]: the async SDK — heartbeats, redo after reconnect, failover, subscriptions (a
//!   local cache that applies the node's delta pushes).
//! - [`net`]: the connection layer — the transport seam (tokio TCP in production, simulated
//!   streams in tests), the accept loop, the socket writer, the request multiplexer.
//! - [`hash`]: the node's hash maps, with one process-wide (settable) seed.
//! - [`config`]: the node's settings (flags and TOML file) and their limits.

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
pub mod client;
pub mod clock;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod frontend;
pub mod hash;
#[cfg(feature = "server")]
pub mod metrics;
pub mod model;
pub mod net;
#[cfg(feature = "server")]
pub mod node;
pub mod ownership;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
pub mod wire;
