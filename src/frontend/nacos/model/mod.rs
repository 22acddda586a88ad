//! Nacos's shapes as plain serde types, and its naming rules. Nothing here knows the request
//! API or the model types: the front end reads these, calls the API, and writes these back.
//!
//! - [`names`]: defaults (`public`, `DEFAULT_GROUP`, `DEFAULT`, the Python client's literal
//!   `None`), `group@@service` names, instance ids, lenient booleans, metadata strings.
//! - [`params`]: the HTTP API's parameters (query string and form body alike) and their checks,
//!   with Nacos's error texts.
//! - [`answers`]: the HTTP answers — v1 shapes, the v2 `{code, message, data}` envelope — and
//!   the `ServiceInfo` snapshot that gRPC answers and pushes carry too.
//! - [`grpc`]: the JSON bodies of the gRPC requests, responses and pushes.

pub mod answers;
pub mod grpc;
pub mod names;
pub mod params;
