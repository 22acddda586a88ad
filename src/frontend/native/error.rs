//! The one mapping of a [`Rejection`] to the binary protocol's Error frame: the code a client's
//! SDK acts on (`wire-spec.md`, error codes) and the rejection's words.

use crate::api::Rejection;
use crate::wire::{ErrorBody, ErrorCode};

/// The code of the Error frame that answers `r` on the binary protocol.
pub fn code(r: &Rejection) -> ErrorCode {
    match r {
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

/// The Error frame body answering `r`.
pub fn error_body(r: &Rejection) -> ErrorBody {
    ErrorBody::new(code(r), r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Access;
    use crate::cluster::ForwardError;
    use crate::model::InvalidInstance;

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
        for (r, want) in rows {
            assert_eq!(code(&r), want, "{r}");
            // The same answer from an owner to a forwarded write, as the client's node sees it.
            let back = Rejection::from(ForwardError::Refused {
                owner: 2,
                error: error_body(&r),
            });
            if matches!(
                want,
                ErrorCode::Unauthenticated | ErrorCode::PermissionDenied
            ) {
                // Owners never check rights (peers are trusted once the handshake passed), so
                // such an answer from one is the owner's own refusal.
                assert!(matches!(back, Rejection::Refused { .. }), "{back}");
                continue;
            }
            assert_eq!(code(&back), want, "{r} came back as {back}");
            assert_eq!(back.is_retryable(), r.is_retryable(), "{r}");
        }
    }
}
