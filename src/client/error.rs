//! What an SDK call can fail with.

use thiserror::Error;

use crate::wire::{ErrorBody, ErrorCode, WireError};

#[derive(Debug, Error)]
pub enum ClientError {
    /// No server in the list could be reached (or all were not ready).
    #[error("no server reachable ({tried} tried); last error: {last}")]
    NoServer { tried: usize, last: String },
    #[error("{what} timed out after {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    /// The server answered with an Error frame.
    #[error("server error ({}): {message}", code.map(|c| c.name()).unwrap_or("unknown code"))]
    Server {
        code: Option<ErrorCode>,
        message: String,
    },
    /// The connection broke while the request was in flight.
    #[error("connection lost")]
    ConnectionLost,
    #[error("the server sent an unexpected answer: {0}")]
    Unexpected(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("client is closed")]
    Closed,
}

impl ClientError {
    pub fn from_body(e: ErrorBody) -> ClientError {
        ClientError::Server {
            code: e.kind(),
            message: e.message.to_string(),
        }
    }

    /// Errors after which the same request may succeed on another connection or node.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::ConnectionLost | ClientError::NoServer { .. } => true,
            ClientError::Server { code, .. } => matches!(
                code,
                Some(
                    ErrorCode::NotReady
                        | ErrorCode::ShuttingDown
                        | ErrorCode::Overloaded
                        | ErrorCode::Timeout
                )
            ),
            _ => false,
        }
    }

    /// Errors that say this node should not be used now: fail over to the next one.
    pub fn wants_failover(&self) -> bool {
        matches!(
            self,
            ClientError::Server {
                code: Some(ErrorCode::NotReady | ErrorCode::ShuttingDown),
                ..
            }
        )
    }
}
