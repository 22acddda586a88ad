//! Distro: a clustered, available-under-partition registry for ephemeral service instances.
//!
//! Module map:
//! - [`wire`]: the binary protocol — frames, message bodies, the codec (`wire-spec.md`).
//! - [`store`]: the in-memory registry — sharded records with versions, tombstones, leases,
//!   per-service snapshots and bucket digests.
//! - [`ownership`]: which node is responsible for an instance (rendezvous hashing, xxh3).
//! - [`clock`]: the millisecond clock (through tokio, so simulated time works) and the hybrid
//!   logical clock that versions every write.
//! - [`cluster`]: the Distro protocol between nodes — membership, forwarding, batched sync,
//!   digest verify and pull, streamed load, handoff.
//! - [`frontend`]: the protocols clients speak besides the native one — the Nacos HTTP and gRPC
//!   APIs (`docs/nacos.md`).
//! - [`server`]: `distrod`'s listener, client sessions, request handling, subscriptions/push.
//! - [`client`]: the async SDK — heartbeats, redo after reconnect, failover, subscriptions.
//! - [`net`]: the transport seam (tokio TCP in production, simulated streams in tests).
//! - [`hash`]: the node's hash maps, with one process-wide (settable) seed.
//! - [`config`]: the node's settings (flags and TOML file) and their limits.

pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod frontend;
pub mod hash;
pub mod net;
pub mod ownership;
pub mod server;
pub mod store;
pub mod wire;
