//! The Nacos 2.x gRPC transport. Every message, both ways, is a [`proto::Payload`]: a
//! [`proto::Metadata`] whose `type` names the request or response class, and a body holding that
//! class's JSON (see [`super::model::grpc`]). Two services carry them: `Request/request` (unary:
//! one request, one response) and `BiRequestStream/requestBiStream` (the connection's stream:
//! the client's setup and acks up, the server's pushes down).
//!
//! - [`proto`]: the prost messages and the tonic services, hand-written (no protoc).

pub mod proto;
