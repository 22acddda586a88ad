//! Why a Nacos request failed, and the one mapping of every cause — a parameter, a lease, a
//! request API [`Rejection`] — to Nacos's answers: the HTTP status and text (v1), the v2
//! envelope's code, and the gRPC `ErrorResponse`'s `errorCode`.

use http::StatusCode;

use super::convert::LeaseError;
use super::model::answers::V2Code;
use super::model::grpc::{BodyError, error_code};
use super::model::names::ServiceNameError;
use super::model::params::ParamError;
use crate::api::Rejection;

/// What a not-ready or stopping node answers (HTTP 503, gRPC 300): the clients move to the
/// next server in their list.
pub const NOT_READY_TEXT: &str = "server is not ready: try another node";
/// What Nacos answers for an instance it does not hold (`GET`/`PUT /instance`).
pub const NO_MATCHED_IP_TEXT: &str = "no matched ip found!";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NacosError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The request API refused the request.
    #[error("{}", rejection_text(.0))]
    Rejected(#[from] Rejection),
    /// The instance a request names is not registered.
    #[error("{NO_MATCHED_IP_TEXT}")]
    NoSuchInstance,
    /// The request body is larger than the front end reads.
    #[error("request body larger than {max} bytes")]
    BodyTooLarge { max: usize },
    /// The request body did not arrive in time.
    #[error("request body not received within {secs} s")]
    BodyTimeout { secs: u64 },
    /// A gRPC request on a connection that has not set itself up on its stream (or whose stream
    /// has ended). Nacos's words.
    #[error("Connection is unregistered.")]
    Unregistered,
    /// A message of the connection's stream (its setup, an ack) sent as a request.
    #[error("{type_name} is sent on the connection's stream, not as a request")]
    WrongCall { type_name: &'static str },
}

impl From<ServiceNameError> for NacosError {
    fn from(e: ServiceNameError) -> NacosError {
        NacosError::Param(e.into())
    }
}

fn rejection_text(r: &Rejection) -> String {
    match r {
        Rejection::NotReady | Rejection::ShuttingDown => NOT_READY_TEXT.to_string(),
        other => other.to_string(),
    }
}

impl NacosError {
    /// The HTTP status of the answer (v1 and v2 alike). A node that cannot serve answers 503, so
    /// that the HTTP clients fail over to the next server.
    pub fn status(&self) -> StatusCode {
        match self {
            NacosError::Param(_) | NacosError::Lease(_) | NacosError::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            NacosError::NoSuchInstance => StatusCode::NOT_FOUND,
            NacosError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            NacosError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            NacosError::Unregistered | NacosError::WrongCall { .. } => StatusCode::BAD_REQUEST,
            NacosError::Rejected(r) => match r {
                Rejection::NotReady
                | Rejection::ShuttingDown
                | Rejection::Overloaded { .. }
                | Rejection::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
                Rejection::NotFound { .. } => StatusCode::NOT_FOUND,
                Rejection::Invalid(_)
                | Rejection::InvalidArgument { .. }
                | Rejection::LimitExceeded { .. }
                | Rejection::Refused { .. } => StatusCode::BAD_REQUEST,
                // Nacos answers 403 to a request without a valid token and to one without the
                // right (its clients then log in again).
                Rejection::Unauthenticated | Rejection::PermissionDenied { .. } => {
                    StatusCode::FORBIDDEN
                }
            },
        }
    }

    /// The code of the v2 envelope.
    pub fn v2_code(&self) -> V2Code {
        match self {
            NacosError::Param(p) => p.v2_code(),
            NacosError::Lease(_) => V2Code::InstanceMetadataError,
            NacosError::NoSuchInstance => V2Code::InstanceNotFound,
            NacosError::Rejected(Rejection::NotFound { .. }) => V2Code::ResourceNotFound,
            NacosError::Rejected(Rejection::Invalid(_)) => V2Code::InstanceError,
            NacosError::Rejected(
                Rejection::Unauthenticated | Rejection::PermissionDenied { .. },
            ) => V2Code::AccessDenied,
            e if e.status() == StatusCode::SERVICE_UNAVAILABLE => V2Code::ServerError,
            _ => V2Code::ParameterValidateError,
        }
    }

    /// The `errorCode` of the gRPC `ErrorResponse`.
    pub fn grpc_code(&self) -> i32 {
        match self {
            NacosError::Body(b) => b.error_code(),
            NacosError::Unregistered => error_code::UN_REGISTER,
            NacosError::Rejected(Rejection::NotReady | Rejection::ShuttingDown) => {
                error_code::INVALID_SERVER_STATUS
            }
            NacosError::Rejected(Rejection::Overloaded { .. } | Rejection::Timeout { .. }) => {
                error_code::OVER_THRESHOLD
            }
            NacosError::Rejected(
                Rejection::Unauthenticated | Rejection::PermissionDenied { .. },
            ) => error_code::NO_RIGHT,
            _ => error_code::INVALID_PARAM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_cannot_serve_sends_clients_elsewhere() {
        for r in [Rejection::NotReady, Rejection::ShuttingDown] {
            let e = NacosError::from(r);
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.to_string(), NOT_READY_TEXT);
            assert_eq!(e.grpc_code(), error_code::INVALID_SERVER_STATUS);
            assert_eq!(e.v2_code(), V2Code::ServerError);
        }
        let e = NacosError::from(Rejection::Overloaded { what: "x" });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.grpc_code(), error_code::OVER_THRESHOLD);
    }

    #[test]
    fn bad_requests_are_400_and_unknown_instances_404() {
        let e = NacosError::from(ParamError::Missing { name: "ip" });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "Param 'ip' is required.");
        assert_eq!(e.v2_code(), V2Code::ParameterMissing);
        assert_eq!(e.grpc_code(), error_code::INVALID_PARAM);
        assert_eq!(NacosError::NoSuchInstance.status(), StatusCode::NOT_FOUND);
        assert_eq!(NacosError::NoSuchInstance.to_string(), NO_MATCHED_IP_TEXT);
        let unknown = NacosError::from(BodyError::UnknownType {
            type_name: "ConfigQueryRequest".into(),
        });
        assert_eq!(unknown.grpc_code(), error_code::NO_HANDLER);
        assert_eq!(
            NacosError::Unregistered.grpc_code(),
            error_code::UN_REGISTER
        );
    }
}
