//! The front ends: each translates one protocol's requests into calls of the request API
//! ([`crate::api`]) and its answers and rejections back into that protocol. None of them touches
//! the store or the cluster.
//!
//! - [`native`]: the binary protocol of `wire-spec.md` (the SDK, `distroctl`, `distro-bench`).
//! - [`nacos`]: the Nacos naming API — HTTP v1/v2 and the 2.x gRPC protocol (`docs/nacos.md`).
//! - [`admin`]: the admin HTTP port — Prometheus metrics, probes, JSON and the web console.
//! - [`http1`]: one HTTP/1.1 connection of the admin port or the Nacos HTTP API (hyper, with
//!   bounds on the request head).
//! - [`share`]: fair share — each client connection's budgets of requests in flight and bytes
//!   queued (the native protocol and the Nacos gRPC stream).

pub mod admin;
pub mod http1;
pub mod nacos;
pub mod native;
pub mod share;
