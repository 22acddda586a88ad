//! Why a request was not carried out: [`Rejection`], one variant per condition. Each front end
//! maps it to its own error shape (the binary protocol's Error frames in `frontend::native`, the
//! Nacos answers in `frontend::nacos::error`); the API knows no wire code. A rejected request
//! changed nothing it was not acknowledged for.
//!
//! Rejections are the client's business (retry elsewhere, fix the request); they are not node
//! failures, which the server logs and handles on its own.

use thiserror::Error;

use crate::auth::Access;
use crate::cluster::{ForwardError, OwnerRefusal};
use crate::model::{InvalidInstance, NodeId};

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
            ForwardError::Refused { .. } => {
                let (owner, refusal, message) = e.owner_refusal().expect("a refusal by the owner");
                match refusal {
                    OwnerRefusal::NotReady => Rejection::NotReady,
                    OwnerRefusal::ShuttingDown => Rejection::ShuttingDown,
                    OwnerRefusal::Overloaded => Rejection::Overloaded {
                        what: "the owner has too much work in flight",
                    },
                    OwnerRefusal::Timeout => Rejection::Timeout {
                        what: format!("owner node {owner}: {message}"),
                    },
                    OwnerRefusal::Other => Rejection::Refused {
                        owner,
                        message: message.to_string(),
                    },
                }
            }
        }
    }
}
