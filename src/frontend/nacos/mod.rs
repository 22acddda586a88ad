//! The Nacos front end: the naming part of Nacos's HTTP API (v1 and v2) and of its 2.x gRPC
//! protocol, so that applications using the published Nacos clients can use this registry by
//! changing a server address. `docs/nacos.md` is the contract: every endpoint, request type,
//! parameter, answer and error as the clients rely on them.
//!
//! - [`model`]: the Nacos shapes as plain serde types — HTTP parameters, v1 answers and the v2
//!   envelope, gRPC request and response bodies — and Nacos's naming rules (defaults,
//!   `group@@service` names, lenient booleans, metadata strings). The request API never sees
//!   these types; the front end translates them.
//! - [`grpc`]: the gRPC transport — the `Payload` prost messages and the tonic plumbing of the
//!   `Request` and `BiRequestStream` services.

pub mod grpc;
pub mod model;
