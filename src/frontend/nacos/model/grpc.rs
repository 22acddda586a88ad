//! The JSON bodies of the gRPC protocol: what the clients send (requests on the unary call,
//! setup and acks on the stream) and what the server sends (responses, pushes). The class of a
//! body is the payload's `metadata.type`; [`decode`] reads a client's payload into a
//! [`ClientMessage`], [`ServerBody::TYPE`] names each server body.
//!
//! Tolerance is the rule on the way in: every field is optional, `null` is accepted wherever a
//! client sends it (the Rust client sends `"requestId":null`, `"instanceId":null`), the Python
//! client's empty strings mean "not given", unknown fields are ignored. Strictness is the rule on
//! the way out: every response carries `resultCode`, `errorCode`, `message` and `requestId` as
//! numbers and strings, never null (the Rust client requires the two codes, the Python client
//! refuses a null string), and every server request carries `"headers":{}` and a string
//! `requestId` (the Rust client requires the headers map).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize};

use super::answers::ServiceInfo;
use super::names;

/// `resultCode` of a successful response (both clients check it; the Python client also checks
/// `errorCode == 0` for health checks).
pub const RESULT_SUCCESS: i32 = 200;
/// `resultCode` of a failed response.
pub const RESULT_FAIL: i32 = 500;

/// `errorCode`s of failed responses (Nacos's `NacosException` codes).
pub mod error_code {
    /// A parameter is missing or invalid.
    pub const INVALID_PARAM: i32 = 400;
    /// No right to do this (authentication failed).
    pub const NO_RIGHT: i32 = 403;
    /// The server failed.
    pub const SERVER_ERROR: i32 = 500;
    /// Too much at once: try again later.
    pub const OVER_THRESHOLD: i32 = 503;
    /// The server is not ready (loading, or shutting down): try another node. The Python client
    /// retries a server check answered with a 3xx code after a second; its health check takes
    /// a 3xx as "still starting" and keeps the connection.
    pub const INVALID_SERVER_STATUS: i32 = 300;
    /// The request came on a connection that has not (or no longer has) set itself up on the
    /// stream. The Python client reconnects when it sees this.
    pub const UN_REGISTER: i32 = 301;
    /// No handler for this request type.
    pub const NO_HANDLER: i32 = 302;
}

/// A string field a client may send as a string, as `null` or not at all.
type Text = Option<String>;

/// The request id: Rust sends a counter as a string or `null`, Python always `""`. Only echoed.
fn request_id(id: &Text) -> String {
    id.clone().unwrap_or_default()
}

/// Metadata as clients send it: an object of strings, but the Python client passes a user's
/// dict through, so numbers and booleans are read as their text.
fn metadata_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let object: Option<serde_json::Map<String, serde_json::Value>> = Option::deserialize(d)?;
    match object {
        None => Ok(BTreeMap::new()),
        Some(o) => names::metadata_object(o).ok_or_else(|| {
            serde::de::Error::custom("metadata values must be text, numbers or booleans")
        }),
    }
}

/// An instance in an `InstanceRequest` or `BatchInstanceRequest` (Nacos's `Instance`). The
/// Python client sends `clusterName: ""` for a batch; blank means the default cluster.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcInstance {
    pub instance_id: Text,
    pub ip: Text,
    pub port: Option<i64>,
    pub weight: Option<f64>,
    pub healthy: Option<bool>,
    pub enabled: Option<bool>,
    pub ephemeral: Option<bool>,
    pub cluster_name: Text,
    pub service_name: Text,
    #[serde(deserialize_with = "metadata_map")]
    pub metadata: BTreeMap<String, String>,
}

/// `ServerCheckRequest` (unary): the first call of the Python client, the last of the Rust
/// client's connection setup. Answered with [`ServerCheckResponse`].
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerCheckRequest {
    pub request_id: Text,
}

/// `HealthCheckRequest` (unary): sent when a connection has been idle five seconds, and by the
/// Rust client while it sets up. Answered with [`HealthCheckResponse`].
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheckRequest {
    pub request_id: Text,
}

/// `ConnectionSetupRequest` (the first message on the stream): registers the connection. Not
/// answered on its own (see `docs/nacos.md` for the `SetupAckRequest`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionSetupRequest {
    pub request_id: Text,
    /// `Nacos-Python-Client:v3.2.0`, `Nacos-Rust-Client:0.8.3`, …
    pub client_version: Text,
    /// The client's namespace (`""` from Python, `public` from Rust): informational only, every
    /// naming request names its namespace itself.
    pub tenant: Text,
    /// `source`, `module`, the Rust client's `AppName`.
    pub labels: Option<HashMap<String, String>>,
}

/// `InstanceRequest` (unary): register or deregister this connection's one instance of a service.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceRequest {
    pub request_id: Text,
    pub namespace: Text,
    pub service_name: Text,
    pub group_name: Text,
    /// `registerInstance` or `deregisterInstance`.
    pub r#type: Text,
    pub instance: Option<GrpcInstance>,
}

/// `InstanceRequest.type` of a registration.
pub const REGISTER_INSTANCE: &str = "registerInstance";
/// `InstanceRequest.type` of a deregistration.
pub const DEREGISTER_INSTANCE: &str = "deregisterInstance";
/// `BatchInstanceRequest.type`: publish exactly these instances of the service.
pub const BATCH_REGISTER_INSTANCE: &str = "batchRegisterInstance";

/// `BatchInstanceRequest` (unary): this connection publishes exactly these instances of the
/// service, replacing what it published before (an empty list withdraws them all: the Python
/// client's batch deregistration sends the instances that remain).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchInstanceRequest {
    pub request_id: Text,
    pub namespace: Text,
    pub service_name: Text,
    pub group_name: Text,
    pub r#type: Text,
    pub instances: Option<Vec<GrpcInstance>>,
}

/// `PersistentInstanceRequest` (unary): what the clients send for `ephemeral=false`. Refused:
/// persistent instances do not exist here.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistentInstanceRequest {
    pub request_id: Text,
}

/// `ServiceQueryRequest` (unary): the instances of a service, once (the Rust client's
/// `get_all_instances(subscribe=false)` and its periodic refresh).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceQueryRequest {
    pub request_id: Text,
    pub namespace: Text,
    pub service_name: Text,
    pub group_name: Text,
    /// Comma-separated clusters; blank = all.
    pub cluster: Text,
    pub healthy_only: Option<bool>,
    /// The Python client's misspelling of `healthyOnly` (Nacos ignores it; here it counts when
    /// `healthyOnly` is absent).
    pub health_only: Option<bool>,
    pub udp_port: Option<i64>,
}

/// `SubscribeServiceRequest` (unary): subscribe (or, with `subscribe: false`, unsubscribe) this
/// connection to a service's changes; answered with the current instances.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscribeServiceRequest {
    pub request_id: Text,
    pub namespace: Text,
    pub service_name: Text,
    pub group_name: Text,
    pub subscribe: Option<bool>,
    /// Comma-separated clusters; blank = all.
    pub clusters: Text,
}

/// `ServiceListRequest` (unary): a page of the service names of a group. The Python client
/// sends `namespace: ""` here (meaning `public`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceListRequest {
    pub request_id: Text,
    pub namespace: Text,
    pub group_name: Text,
    pub page_no: Option<i64>,
    pub page_size: Option<i64>,
    /// A Nacos label selector; not supported, ignored.
    pub selector: Text,
}

/// A client's response on the stream to one of the server's requests (`NotifySubscriberResponse`,
/// `ClientDetectionResponse`, …): the request id it answers and whether it succeeded.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientAck {
    pub result_code: Option<i32>,
    pub error_code: Option<i32>,
    pub message: Text,
    pub request_id: Text,
}

impl ClientAck {
    /// The request id answered (`""` if none).
    pub fn request_id(&self) -> String {
        request_id(&self.request_id)
    }

    /// Whether the client took the request (Rust answers 200/"Response ok", Python 200/"").
    pub fn succeeded(&self) -> bool {
        self.result_code.unwrap_or(RESULT_SUCCESS) == RESULT_SUCCESS
    }
}

/// Every payload a client sends, by its `metadata.type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    ServerCheck(ServerCheckRequest),
    HealthCheck(HealthCheckRequest),
    ConnectionSetup(ConnectionSetupRequest),
    Instance(InstanceRequest),
    BatchInstance(BatchInstanceRequest),
    PersistentInstance(PersistentInstanceRequest),
    ServiceQuery(ServiceQueryRequest),
    Subscribe(SubscribeServiceRequest),
    ServiceList(ServiceListRequest),
    /// `NotifySubscriberResponse`: the ack of a push.
    NotifyAck(ClientAck),
    /// `ClientDetectionResponse`, `ConnectResetResponse`, `SetupAckResponse`: acks of the
    /// server's other requests.
    OtherAck {
        type_name: &'static str,
        ack: ClientAck,
    },
}

/// Why a client's payload cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A `metadata.type` this server has no handler for (Nacos: errorCode 302,
    /// "RequestHandler Not Found"); config and lock requests land here too.
    #[error("RequestHandler Not Found: no handler for request type '{type_name}'")]
    UnknownType { type_name: String },
    /// The body is not the JSON of its class.
    #[error("malformed {type_name} body: {reason}")]
    Malformed {
        type_name: &'static str,
        reason: String,
    },
}

impl BodyError {
    /// The `errorCode` of the `ErrorResponse` that answers it.
    pub fn error_code(&self) -> i32 {
        match self {
            BodyError::UnknownType { .. } => error_code::NO_HANDLER,
            BodyError::Malformed { .. } => error_code::INVALID_PARAM,
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(type_name: &'static str, json: &'a [u8]) -> Result<T, BodyError> {
    // An empty body (a payload without `body`) reads as an empty object.
    let json: &[u8] = if json.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        json
    };
    serde_json::from_slice(json).map_err(|e| BodyError::Malformed {
        type_name,
        reason: e.to_string(),
    })
}

/// Reads a client's payload (its `metadata.type` and body JSON).
pub fn decode(type_name: &str, json: &[u8]) -> Result<ClientMessage, BodyError> {
    use ClientMessage as M;
    Ok(match type_name {
        "ServerCheckRequest" => M::ServerCheck(parse("ServerCheckRequest", json)?),
        "HealthCheckRequest" => M::HealthCheck(parse("HealthCheckRequest", json)?),
        "ConnectionSetupRequest" => M::ConnectionSetup(parse("ConnectionSetupRequest", json)?),
        "InstanceRequest" => M::Instance(parse("InstanceRequest", json)?),
        "BatchInstanceRequest" => M::BatchInstance(parse("BatchInstanceRequest", json)?),
        "PersistentInstanceRequest" => {
            M::PersistentInstance(parse("PersistentInstanceRequest", json)?)
        }
        "ServiceQueryRequest" => M::ServiceQuery(parse("ServiceQueryRequest", json)?),
        "SubscribeServiceRequest" => M::Subscribe(parse("SubscribeServiceRequest", json)?),
        "ServiceListRequest" => M::ServiceList(parse("ServiceListRequest", json)?),
        "NotifySubscriberResponse" => M::NotifyAck(parse("NotifySubscriberResponse", json)?),
        "ClientDetectionResponse" => M::OtherAck {
            type_name: "ClientDetectionResponse",
            ack: parse("ClientDetectionResponse", json)?,
        },
        "ConnectResetResponse" => M::OtherAck {
            type_name: "ConnectResetResponse",
            ack: parse("ConnectResetResponse", json)?,
        },
        "SetupAckResponse" => M::OtherAck {
            type_name: "SetupAckResponse",
            ack: parse("SetupAckResponse", json)?,
        },
        other => {
            return Err(BodyError::UnknownType {
                type_name: other.chars().take(128).collect(),
            });
        }
    })
}

/// A body the server sends; `TYPE` goes into `metadata.type`.
pub trait ServerBody: Serialize {
    const TYPE: &'static str;

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("server bodies are plain data")
    }
}

/// The four fields every response carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseHead {
    pub result_code: i32,
    pub error_code: i32,
    pub message: String,
    pub request_id: String,
}

impl ResponseHead {
    /// Success, answering `request_id` (echoed as sent, `""` for none).
    pub fn ok(request_id: &Text) -> ResponseHead {
        ResponseHead {
            result_code: RESULT_SUCCESS,
            error_code: 0,
            message: String::new(),
            request_id: self::request_id(request_id),
        }
    }

    /// Failure with one of the [`error_code`]s.
    pub fn fail(request_id: &Text, error_code: i32, message: impl Into<String>) -> ResponseHead {
        ResponseHead {
            result_code: RESULT_FAIL,
            error_code,
            message: message.into(),
            request_id: self::request_id(request_id),
        }
    }
}

macro_rules! server_body {
    ($t:ident) => {
        impl ServerBody for $t {
            const TYPE: &'static str = stringify!($t);
        }
    };
}

/// Any failed request: the response class the clients expect for errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
}
server_body!(ErrorResponse);

/// The answer to `ServerCheckRequest`: the connection's id.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCheckResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub connection_id: String,
    /// True: the Python client then waits (up to 5 s) for the server's `SetupAckRequest` after
    /// its `ConnectionSetupRequest` before it sends anything else — so no request can overtake
    /// the connection's registration.
    pub support_ability_negotiation: bool,
}
server_body!(ServerCheckResponse);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
}
server_body!(HealthCheckResponse);

/// The answer to `InstanceRequest`: `type` echoes the request's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub r#type: String,
}
server_body!(InstanceResponse);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchInstanceResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub r#type: String,
}
server_body!(BatchInstanceResponse);

/// The answer to `ServiceQueryRequest`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryServiceResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub service_info: ServiceInfo,
}
server_body!(QueryServiceResponse);

/// The answer to `SubscribeServiceRequest` (both ways).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeServiceResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub service_info: ServiceInfo,
}
server_body!(SubscribeServiceResponse);

/// The answer to `ServiceListRequest`: the total count and one page of names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceListResponse {
    #[serde(flatten)]
    pub head: ResponseHead,
    pub count: usize,
    pub service_names: Vec<String>,
}
server_body!(ServiceListResponse);

/// The head of every request the server sends on the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRequestHead {
    /// Always `{}` (the Rust client requires the map).
    pub headers: BTreeMap<String, String>,
    /// The id the client's ack echoes.
    pub request_id: String,
    /// "naming" or "internal".
    pub module: String,
}

impl ServerRequestHead {
    pub fn new(request_id: u64, module: &str) -> ServerRequestHead {
        ServerRequestHead {
            headers: BTreeMap::new(),
            request_id: request_id.to_string(),
            module: module.to_string(),
        }
    }
}

/// The push: a subscribed service changed; here is all of it. Acked with
/// `NotifySubscriberResponse` carrying the same `requestId`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifySubscriberRequest {
    #[serde(flatten)]
    pub head: ServerRequestHead,
    pub namespace: String,
    pub service_name: String,
    pub group_name: String,
    pub service_info: ServiceInfo,
}
server_body!(NotifySubscriberRequest);

/// "Are you there?": both clients answer `ClientDetectionResponse`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientDetectionRequest {
    #[serde(flatten)]
    pub head: ServerRequestHead,
}
server_body!(ClientDetectionRequest);

/// "Your connection is registered": sent after a `ConnectionSetupRequest` when the server check
/// announced `supportAbilityNegotiation`. The Python client waits for it (and does not answer
/// it); the Rust client ignores it. `abilityTable` must be present (the Python client's model
/// requires the field; `null` is fine).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetupAckRequest {
    #[serde(flatten)]
    pub head: ServerRequestHead,
    pub ability_table: Option<BTreeMap<String, bool>>,
}
server_body!(SetupAckRequest);

#[cfg(test)]
mod tests;
