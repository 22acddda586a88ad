//! The front ends: each translates one protocol's requests into calls of the request API and its
//! answers and rejections back into that protocol. None of them touches the store or the cluster.
//!
//! - [`nacos`]: the Nacos naming API — HTTP v1/v2 and the 2.x gRPC protocol (`docs/nacos.md`).

pub mod nacos;
