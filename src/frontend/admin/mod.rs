//! The admin HTTP port (`--http ADDR`, default `127.0.0.1:8860`): what operators and their
//! tools read — Prometheus metrics, the liveness and readiness probes, the cluster, namespaces,
//! services and instances as JSON, and a web console; and an operator's deregistration of an
//! instance. Like every front end it only translates: what it shows and does goes through the
//! request API ([`crate::api::Api`]) and the node's metrics.
//!
//! On a node with a token file (`docs/security.md` §4.2) the registry's data and every change
//! need a token, sent as `Authorization: Bearer <token>` and checked with the caller's rights
//! like any other front end's caller (401 without a valid token, 403 without the right). The
//! probes, `/metrics` and the console's static files stay open: they show counts, not registry
//! data, and are what orchestrators and Prometheus read without secrets.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | every metric, Prometheus text format |
//! | `GET /health` | 200 while the process serves HTTP at all (liveness) |
//! | `GET /ready` | 200 when the node serves clients; 503 while loading or shutting down |
//! | `GET /cluster` | [`json::ClusterJson`] (= `distroctl cluster --json`) |
//! | `GET /namespaces` | [`json::NamespaceJson`] array |
//! | `GET /services?namespace=NS` | [`json::ServiceJson`] array (= `distroctl services --json`) |
//! | `GET /instances?service=S[&namespace=NS][&group=G][&healthy_only=true]` | [`json::InstanceJson`] array (= `distroctl list --json`) |
//! | `DELETE /instances?service=S&ip=IP&port=P[&namespace=NS][&group=G][&cluster=C]` | deregisters one instance (needs `write` on the namespace): `{"deregistered": 0 or 1}` |
//! | `GET /` | the console (`console/`: HTML, JS and CSS compiled into the binary) |
//!
//! - [`json`]: the JSON shapes, shared with `distroctl`.

pub mod json;

use axum::extract::{FromRequestParts, Query, State, rejection::QueryRejection};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Api, Rejection};
use crate::auth::Principal;
use crate::frontend::http1;
use crate::model::{InstanceKey, PAGE_SIZE_MAX, ServiceName};
use crate::net::Listener;
use json::{ClusterJson, ErrorJson, InstanceJson, NamespaceJson, ServiceJson};

/// Admin connections at once: a few scrapers, probes and consoles. Beyond it new connections
/// wait for a free slot, so a flood of them costs the node nothing but queued sockets.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The admin port's routes over `api`.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console.js", get(console_js))
        .route("/console.css", get(console_css))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster", get(cluster))
        .route("/namespaces", get(namespaces))
        .route("/services", get(services))
        .route("/instances", get(instances).delete(deregister))
        .fallback(not_found)
        .with_state(api)
}

/// The largest request head of the admin port: its requests carry a few short parameters and,
/// for a change, a bearer token. Beyond it hyper answers 431.
const ADMIN_HEAD_BYTES_MAX: usize = 16 << 10;

/// Serves the admin port on `listener` (TLS when it is a TLS listener) until `shutdown`, then
/// lets the requests in progress finish.
pub async fn serve(api: Api, listener: Box<dyn Listener>, shutdown: CancellationToken) {
    let app = router(api);
    // Not the node's tracker: the admin port outlives the node's other tasks (`Server::run`).
    let tracker = TaskTracker::new();
    let stop = shutdown.clone();
    crate::net::accept_loop(
        "admin",
        &*listener,
        ADMIN_CONNECTIONS_MAX,
        shutdown,
        &tracker,
        move |stream, peer| {
            http1::serve(
                "admin",
                app.clone(),
                stream,
                peer,
                ADMIN_HEAD_BYTES_MAX,
                stop.clone(),
            )
        },
    )
    .await;
    tracker.close();
    tracker.wait().await;
}

async fn index() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

async fn console_js() -> Response {
    static_file("text/javascript; charset=utf-8", CONSOLE_JS)
}

async fn console_css() -> Response {
    static_file("text/css; charset=utf-8", CONSOLE_CSS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        api.metrics_text(),
    )
        .into_response()
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(api): State<Api>) -> Response {
    if api.is_serving() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let why = if api.node().shutdown.is_cancelled() {
        "not ready: shutting down\n"
    } else {
        "not ready: loading the cluster's data\n"
    };
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

/// The caller of a request: the token of its `Authorization: Bearer` header (hashed once per
/// request: this port is no hot path), or the guest without one — every right on a node without
/// a token file, none on a node with one. A header that is not a valid token is
/// `Unauthenticated`.
struct Caller(Principal);

impl FromRequestParts<Api> for Caller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, AdminError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Caller(api.guest()));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(AdminError::Rejected(Rejection::Unauthenticated))?;
        Ok(Caller(api.authenticate(token)?))
    }
}

async fn cluster(
    State(api): State<Api>,
    Caller(who): Caller,
) -> Result<Json<ClusterJson>, AdminError> {
    Ok(Json(ClusterJson::from(&api.cluster_status(&who)?)))
}

async fn namespaces(
    State(api): State<Api>,
    Caller(who): Caller,
) -> Result<Json<Vec<NamespaceJson>>, AdminError> {
    let list = api.list_namespaces(&who)?;
    Ok(Json(list.iter().map(NamespaceJson::from).collect()))
}

#[derive(Debug, Deserialize)]
struct ServicesParams {
    #[serde(default = "default_namespace")]
    namespace: String,
}

async fn services(
    State(api): State<Api>,
    Caller(who): Caller,
    params: Result<Query<ServicesParams>, QueryRejection>,
) -> Result<Json<Vec<ServiceJson>>, AdminError> {
    let Query(p) = params?;
    let mut out = Vec::new();
    let mut page = 0;
    loop {
        let list = api.list_services(&who, &p.namespace, page, PAGE_SIZE_MAX as u16)?;
        out.extend(
            list.services
                .iter()
                .map(|s| ServiceJson::new(&p.namespace, s)),
        );
        if list.services.is_empty() || out.len() >= list.total as usize {
            return Ok(Json(out));
        }
        page += 1;
    }
}

#[derive(Debug, Deserialize)]
struct InstancesParams {
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_group")]
    group: String,
    service: String,
    #[serde(default)]
    healthy_only: bool,
}

fn default_namespace() -> String {
    "public".into()
}

fn default_group() -> String {
    "DEFAULT_GROUP".into()
}

async fn instances(
    State(api): State<Api>,
    Caller(who): Caller,
    params: Result<Query<InstancesParams>, QueryRejection>,
) -> Result<Json<Vec<InstanceJson>>, AdminError> {
    let Query(p) = params?;
    let name = ServiceName::new(&p.namespace, &p.group, &p.service);
    let snap = api.query(&who, &name, "", p.healthy_only)?.decode();
    Ok(Json(InstanceJson::all(&snap)))
}

#[derive(Debug, Deserialize)]
struct InstanceParams {
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_group")]
    group: String,
    service: String,
    #[serde(default = "default_cluster")]
    cluster: String,
    ip: String,
    port: u16,
}

fn default_cluster() -> String {
    "DEFAULT".into()
}

/// What a deregistration answers: how many instances it removed (0: there was none).
#[derive(Debug, serde::Serialize)]
struct Deregistered {
    deregistered: u32,
}

/// `DELETE /instances`: an operator takes one instance out of the registry (a client that still
/// runs registers it again with its next beat or reconnect).
async fn deregister(
    State(api): State<Api>,
    Caller(who): Caller,
    params: Result<Query<InstanceParams>, QueryRejection>,
) -> Result<Json<Deregistered>, AdminError> {
    let Query(p) = params?;
    let key = InstanceKey {
        service: ServiceName::new(&p.namespace, &p.group, &p.service),
        cluster: p.cluster.as_str().into(),
        ip: p.ip.as_str().into(),
        port: p.port,
    };
    // Carried out in a task of the node: a caller that goes away does not leave it half done.
    let node = api.node().clone();
    let deregistered = node
        .tracker
        .spawn(async move { api.deregister(&who, &[key]).await })
        .await
        .unwrap_or(Err(Rejection::ShuttingDown))?;
    Ok(Json(Deregistered { deregistered }))
}

async fn not_found() -> AdminError {
    AdminError::NotFound
}

/// Why the admin port did not answer a request, as JSON ([`ErrorJson`]) with its HTTP status.
enum AdminError {
    Rejected(Rejection),
    BadRequest(String),
    NotFound,
}

impl From<Rejection> for AdminError {
    fn from(r: Rejection) -> AdminError {
        AdminError::Rejected(r)
    }
}

impl From<QueryRejection> for AdminError {
    fn from(r: QueryRejection) -> AdminError {
        AdminError::BadRequest(r.body_text())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let challenge = matches!(self, AdminError::Rejected(Rejection::Unauthenticated));
        let (status, body) = match self {
            AdminError::Rejected(r) => (status_of(&r), ErrorJson::from(&r)),
            AdminError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                ErrorJson {
                    error: "bad_request".into(),
                    message,
                },
            ),
            AdminError::NotFound => (
                StatusCode::NOT_FOUND,
                ErrorJson {
                    error: "not_found".into(),
                    message: "no such path on the admin port; see / for the console".into(),
                },
            ),
        };
        let mut r = (status, Json(body)).into_response();
        if challenge {
            // RFC 6750: a 401 names the scheme that would have been accepted.
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The HTTP status that tells a caller what it can do about a rejection.
fn status_of(r: &Rejection) -> StatusCode {
    match r {
        Rejection::NotReady | Rejection::ShuttingDown | Rejection::Overloaded { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Rejection::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Rejection::NotFound { .. } => StatusCode::NOT_FOUND,
        Rejection::Invalid(_)
        | Rejection::InvalidArgument { .. }
        | Rejection::LimitExceeded { .. }
        | Rejection::Refused { .. } => StatusCode::BAD_REQUEST,
        Rejection::Unauthenticated => StatusCode::UNAUTHORIZED,
        Rejection::PermissionDenied { .. } => StatusCode::FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::node::Node;

    /// While a node stops, its readiness probe says so (the admin port outlives the rest of the
    /// node, see `Server::run`).
    #[tokio::test]
    async fn a_stopping_node_is_not_ready() {
        let api = Api::new(Node::new(Config::default(), Clock::system()));
        assert_eq!(ready(State(api.clone())).await.status(), StatusCode::OK);
        api.node().shutdown.cancel();
        let r = ready(State(api.clone())).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 1 << 10).await.unwrap();
        assert_eq!(&body[..], b"not ready: shutting down\n");
        // Liveness stays up: the process still answers.
        assert_eq!(health().await, "ok\n");
    }
}
