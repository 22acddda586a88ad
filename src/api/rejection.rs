//! Why a request was not carried out: [`Rejection`], one variant per condition, and its one
//! mapping to and from the binary protocol's Error frames (used by the native front end for its
//! clients and by the API for the answers of owners to forwarded writes). Other front ends map
//! it to their own error shapes. A rejected request changed nothing it was not acknowledged for.
//!
//! Rejections are the client's business (retry elsewhere, fix the request); they are not node
//! failures, which the server logs and handles on its own.

use thiserror::Error;

use crate::auth::Access;
use crate::cluster::ForwardError;
use crate::model::{InvalidInstance, NodeId};
use crate::wire::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejection {
    /// The node has not finished loading the cluster's data; another node can serve.
    #[error("node is still loading the cluster's data; try another node")]
    NotReady,
    /// The node is stopping; another node can serve.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Too much work in flight on this node; retry later.
    #[error("{what}; retry")]
    Overloaded { what: &'static str },
    /// The request did not complete in time (a forward to the owner, say); retry.
    #[error("{what}; retry")]
    Timeout { what: String },
    /// An instance or key breaks a rule of the data model.
    #[error(transparent)]
    Invalid(#[from] InvalidInstance),
    /// Another argument is not acceptable (a page size of 0, say).
    #[error("{what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    /// A bound of one request or one connection would be passed.
    #[error("more than {max} {what}")]
    LimitExceeded { what: &'static str, max: usize },
    /// The request names something this node does not hold.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The owner of a forwarded write refused it for a reason of its own.
    #[error("owner node {owner}: {message}")]
    Refused { owner: NodeId, message: String },
    /// The node requires a token and the caller presented none that it holds. The same answer
    /// whatever was presented, so that it tells nothing about which tokens exist.
    #[error("not authenticated: this node requires a valid token")]
    Unauthenticated,
    /// The caller's token (or user) does not grant `access` to `namespace`.
    #[error("permission denied: no {access} right on namespace {namespace:?}")]
    PermissionDenied { namespace: String, access: Access },
}

impl Rejection {
    /// Rejections after which the same request may succeed later or on another node.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Rejection::NotReady
                | Rejection::ShuttingDown
                | Rejection::Overloaded { .. }
                | Rejection::Timeout { .. }
        )
    }

    /// The condition's name in snake case, the same for every front end (metrics label it so).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotReady => "not_ready",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::Overloaded { .. } => "overloaded",
            Rejection::Timeout { .. } => "timeout",
            Rejection::Invalid(_) => "invalid",
            Rejection::InvalidArgument { .. } => "invalid_argument",
            Rejection::LimitExceeded { .. } => "limit_exceeded",
            Rejection::NotFound { .. } => "not_found",
            Rejection::Refused { .. } => "refused",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::PermissionDenied { .. } => "permission_denied",
        }
    }

    /// The code of the Error frame that answers this rejection on the binary protocol.
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::NotReady => ErrorCode::NotReady,
            Rejection::ShuttingDown => ErrorCode::ShuttingDown,
            Rejection::Overloaded { .. } => ErrorCode::Overloaded,
            Rejection::Timeout { .. } => ErrorCode::Timeout,
            Rejection::Invalid(_)
            | Rejection::InvalidArgument { .. }
            | Rejection::LimitExceeded { .. }
            | Rejection::NotFound { .. }
            | Rejection::Refused { .. } => ErrorCode::InvalidArgument,
            Rejection::Unauthenticated => ErrorCode::Unauthenticated,
            Rejection::PermissionDenied { .. } => ErrorCode::PermissionDenied,
        }
    }

    /// The Error frame body answering this rejection.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }

    /// The rejection an owner's Error answer to a forwarded write stands for: the conditions a
    /// client acts on keep their meaning, the rest is the owner's own refusal.
    pub fn from_owner(owner: NodeId, e: &ErrorBody) -> Rejection {
        match e.kind() {
            Some(ErrorCode::NotReady) => Rejection::NotReady,
            Some(ErrorCode::ShuttingDown) => Rejection::ShuttingDown,
            Some(ErrorCode::Overloaded) => Rejection::Overloaded {
                what: "the owner has too much work in flight",
            },
            Some(ErrorCode::Timeout) => Rejection::Timeout {
                what: format!("owner node {owner}: {}", e.message),
            },
            _ => Rejection::Refused {
                owner,
                message: e.message.to_string(),
            },
        }
    }
}

impl From<ForwardError> for Rejection {
    fn from(e: ForwardError) -> Rejection {
        match e {
            ForwardError::Overloaded => Rejection::Overloaded {
                what: "too many forwards in flight",
            },
            ForwardError::Unreachable { .. } | ForwardError::Failed { .. } => Rejection::Timeout {
                what: e.to_string(),
            },
            ForwardError::Refused { owner, error } => Rejection::from_owner(owner, &error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_has_its_code_and_owner_errors_keep_their_meaning() {
        let rows = [
            (Rejection::NotReady, ErrorCode::NotReady),
            (Rejection::ShuttingDown, ErrorCode::ShuttingDown),
            (Rejection::Overloaded { what: "x" }, ErrorCode::Overloaded),
            (Rejection::Timeout { what: "x".into() }, ErrorCode::Timeout),
            (
                Rejection::Invalid(InvalidInstance::PortZero { ip: "h".into() }),
                ErrorCode::InvalidArgument,
            ),
            (
                Rejection::LimitExceeded {
                    what: "subscriptions",
                    max: 1,
                },
                ErrorCode::InvalidArgument,
            ),
            (Rejection::Unauthenticated, ErrorCode::Unauthenticated),
            (
                Rejection::PermissionDenied {
                    namespace: "prod".into(),
                    access: Access::Write,
                },
                ErrorCode::PermissionDenied,
            ),
        ];
        for (r, code) in rows {
            assert_eq!(r.code(), code, "{r}");
            let back = Rejection::from_owner(2, &r.to_error_body());
            if matches!(
                code,
                ErrorCode::Unauthenticated | ErrorCode::PermissionDenied
            ) {
                // Owners never check rights (peers are trusted once the handshake passed), so
                // such an answer from one is the owner's own refusal.
                assert!(matches!(back, Rejection::Refused { .. }), "{back}");
                continue;
            }
            assert_eq!(back.code(), code, "{r} came back as {back}");
            assert_eq!(back.is_retryable(), r.is_retryable(), "{r}");
        }
    }
}
