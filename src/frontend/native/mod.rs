//! The binary protocol's front end: one [`session`] per client connection, over the request API.
//! This is the only place where a [`crate::api::Rejection`] becomes a wire Error frame for a
//! client ([`error`]).

pub mod error;
pub mod session;

pub use session::serve;
