//! The Nacos HTTP API (v1 under `/nacos/v1/`, v2 under `/nacos/v2/`, `docs/nacos.md` §4–5):
//! the listener and its connections, the routes, and the reading of parameters and writing of
//! answers they share.
//!
//! - [`naming`]: the instance and service endpoints (register, update, deregister, detail,
//!   list, beat, service list).
//! - [`ops`]: the operators' endpoints (metrics, health probes, cluster nodes).
//!
//! HTTP clients are lease-bound: their instances live on their lease and the clients beat.
//! Every request goes through the request API; a node that cannot serve answers 503 so that the
//! clients move to the next server in their list.

mod naming;
mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use super::auth::NacosAuth;
use super::error::NacosError;
use super::model::answers::V2Result;
use super::model::params::{PARAMS_BYTES_MAX, ParamError, RawParams};
use crate::api::Api;
use crate::auth::Principal;
use crate::frontend::http1;
use crate::net::Listener;

/// Largest request body read (a form body carries the same parameters the query string can):
/// the parameters' own bound. A larger body is answered 413 without being read.
pub const HTTP_BODY_BYTES_MAX: usize = PARAMS_BYTES_MAX;

/// Largest request head (request line and headers): the query string, which may carry every
/// parameter, plus room for ordinary headers. Beyond it hyper answers 431.
pub const HTTP_HEAD_BYTES_MAX: usize = PARAMS_BYTES_MAX + (16 << 10);

/// A request's body must arrive within this long (a client that declares a body and sends it
/// slowly, or not at all, is answered 408 and its connection closed).
pub const HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares.
pub(super) struct Http {
    pub api: Api,
    pub auth: Arc<NacosAuth>,
    /// Open Nacos gRPC connections of this node (for the operator metrics).
    pub grpc_connections: Arc<std::sync::atomic::AtomicU64>,
}

/// The routes of the Nacos HTTP API.
fn router(state: Arc<Http>) -> Router {
    use naming::*;
    use ops::*;
    Router::new()
        .route(
            "/nacos/v1/ns/instance",
            get(detail::<false>)
                .post(register::<false>)
                .put(update::<false>)
                .delete(deregister::<false>),
        )
        .route("/nacos/v1/ns/instance/list", get(list::<false>))
        .route("/nacos/v1/ns/instance/beat", put(beat::<false>))
        .route("/nacos/v1/ns/service/list", get(service_list::<false>))
        .route("/nacos/v1/auth/login", post(login))
        .route("/nacos/v1/auth/users/login", post(login))
        .route("/nacos/v1/ns/operator/metrics", get(metrics))
        .route("/nacos/v1/console/health/liveness", get(liveness))
        .route("/nacos/v1/console/health/readiness", get(readiness))
        .route("/nacos/v1/core/cluster/nodes", get(cluster_nodes))
        .route(
            "/nacos/v2/ns/instance",
            get(detail::<true>)
                .post(register::<true>)
                .put(update::<true>)
                .delete(deregister::<true>),
        )
        .route("/nacos/v2/ns/instance/list", get(list::<true>))
        .route("/nacos/v2/ns/instance/beat", put(beat::<true>))
        .route("/nacos/v2/ns/service/list", get(service_list::<true>))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "no such Nacos endpoint: {} {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Serves the Nacos HTTP API on `listener` (TLS when it is a TLS listener) until the node shuts
/// down; at most `max_connections` connections at once (the accept loop waits for a free slot
/// beyond that).
pub(super) async fn serve(
    api: Api,
    auth: Arc<NacosAuth>,
    listener: Box<dyn Listener>,
    grpc_connections: Arc<std::sync::atomic::AtomicU64>,
) {
    let node = api.node().clone();
    let app = router(Arc::new(Http {
        api,
        auth,
        grpc_connections,
    }));
    let shutdown = node.shutdown.clone();
    crate::net::accept_loop(
        "Nacos HTTP",
        &*listener,
        node.config.max_connections,
        node.shutdown.clone(),
        &node.tracker,
        move |stream, peer| {
            http1::serve(
                "Nacos HTTP",
                app.clone(),
                stream,
                peer,
                HTTP_HEAD_BYTES_MAX,
                shutdown.clone(),
            )
        },
    )
    .await
}

/// The parameters of a request: its query string and, for a form body, the body.
pub(super) async fn params(req: Request) -> Result<RawParams, NacosError> {
    let (parts, body) = req.into_parts();
    let too_large = NacosError::BodyTooLarge {
        max: HTTP_BODY_BYTES_MAX,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > HTTP_BODY_BYTES_MAX as u64) {
        return Err(too_large);
    }
    let bytes = tokio::time::timeout(
        HTTP_BODY_TIMEOUT,
        axum::body::to_bytes(body, HTTP_BODY_BYTES_MAX),
    )
    .await
    .map_err(|_| NacosError::BodyTimeout {
        secs: HTTP_BODY_TIMEOUT.as_secs(),
    })?
    .map_err(|_| too_large)?;
    // Nacos reads a body as parameters when it is a form; a body of another type (JSON, say) is
    // not a Nacos request's and is ignored. No content type: a form, as curl -d sends one.
    let is_form = match parts.headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .is_ok_and(|t| t.starts_with("application/x-www-form-urlencoded")),
    };
    let form = (is_form && !bytes.is_empty()).then_some(&bytes[..]);
    Ok(RawParams::parse(parts.uri.query(), form)?)
}

/// The parameters of a request and its caller (refused before anything else of the request is
/// looked at, as Nacos does, when a node with a token file finds no valid credentials).
pub(super) async fn request(h: &Http, req: Request) -> Result<(RawParams, Principal), NacosError> {
    let p = params(req).await?;
    let who = h.auth.caller(&p).await?;
    Ok((p, who))
}

/// `POST /nacos/v1/auth/login` and `/nacos/v1/auth/users/login` (`username` and `password` in
/// the query or a form): Nacos's `{"accessToken","tokenTtl","globalAdmin","username"}`, or 403
/// with the same text for a wrong password and an unknown user.
async fn login(State(h): State<Arc<Http>>, req: Request) -> Response {
    let r = async {
        let p = params(req).await?;
        let username = p
            .get("username")
            .filter(|u| !u.is_empty())
            .ok_or(ParamError::Missing { name: "username" })?;
        let password = p
            .get("password")
            .ok_or(ParamError::Missing { name: "password" })?;
        Ok::<_, NacosError>(h.auth.login(username, password).await?)
    }
    .await;
    match r {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => error::<false>(e),
    }
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    r
}

pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("answers are plain data");
    let mut r = (status, Body::from(Bytes::from(bytes))).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    r
}

/// An error as the API version answers it: v1 a text body, v2 the envelope.
pub(super) fn error<const V2: bool>(e: NacosError) -> Response {
    if V2 {
        json(e.status(), &V2Result::failure(e.v2_code(), e.to_string()))
    } else {
        text(e.status(), e.to_string())
    }
}

/// A write's success: v1 the text `ok`, v2 the envelope with `"ok"`.
pub(super) fn ok<const V2: bool>(r: Result<(), NacosError>) -> Response {
    match r {
        Ok(()) if V2 => json(StatusCode::OK, &V2Result::success("ok")),
        Ok(()) => text(StatusCode::OK, super::model::answers::V1_OK),
        Err(e) => error::<V2>(e),
    }
}

/// A read's success: v1 the value itself, v2 the envelope around it.
pub(super) fn data<const V2: bool, T: Serialize>(r: Result<T, NacosError>) -> Response {
    match r {
        Ok(v) if V2 => json(StatusCode::OK, &V2Result::success(v)),
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error::<V2>(e),
    }
}
