//! The gRPC calls, translated into request API calls (`docs/nacos.md` §6.2–6.4): the unary
//! requests, each answered with its response class or an `ErrorResponse`, and the connection's
//! stream — its `ConnectionSetupRequest`, the `SetupAckRequest` answering it, the acks of
//! pushes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::ConnInfo;
use super::conn::{Connection, Registry};
use super::proto::{NacosGrpc, Payload};
use super::push::{self, OUTBOUND_QUEUE_MAX};
use crate::api::{Api, Rejection};
use crate::frontend::nacos::auth::NacosAuth;
use crate::frontend::nacos::convert::{self, GRPC_CACHE_MILLIS, InfoShape};
use crate::frontend::nacos::error::NacosError;
use crate::frontend::nacos::model::grpc::{
    BATCH_REGISTER_INSTANCE, BatchInstanceRequest, BatchInstanceResponse, BodyError, ClientMessage,
    DEREGISTER_INSTANCE, ErrorResponse, GrpcInstance, HealthCheckResponse, InstanceRequest,
    InstanceResponse, QueryServiceResponse, REGISTER_INSTANCE, ResponseHead, ServerBody,
    ServerCheckResponse, ServerRequestHead, ServiceListRequest, ServiceListResponse,
    ServiceQueryRequest, SetupAckRequest, SubscribeServiceRequest, SubscribeServiceResponse,
    decode,
};
use crate::frontend::nacos::model::names;
use crate::frontend::nacos::model::params::{ParamError, WEIGHT_MAX, clusters};
use crate::frontend::share::Share;
use crate::model::{BATCH_INSTANCES_MAX, Instance, InstanceKey, ServiceName};

/// The server's half of a connection's stream.
pub type Outbound = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

/// How long a connection refused `AUTH_FAILURES_MAX` times stays open after its last
/// refusal: time for that answer to be written before the socket is cut.
const REFUSED_CLOSE_DELAY: Duration = Duration::from_millis(200);

/// The header of a request's `Metadata` that carries the caller's accessToken.
pub const ACCESS_TOKEN_HEADER: &str = "accessToken";

/// Serves both calls of every connection of a node.
pub struct Handler {
    reg: Arc<Registry>,
    auth: Arc<NacosAuth>,
}

impl Handler {
    pub fn new(reg: Arc<Registry>, auth: Arc<NacosAuth>) -> Handler {
        Handler { reg, auth }
    }

    fn api(&self) -> &Api {
        &self.reg.api
    }

    /// The connection a call came on (`None`: it is closed already).
    fn conn_of<T>(&self, request: &Request<T>) -> Option<Arc<Connection>> {
        let info = request.extensions().get::<ConnInfo>()?;
        self.reg.get(info.id)
    }
}

fn payload<T: ServerBody>(body: &T) -> Payload {
    Payload::new(T::TYPE, body.to_json())
}

fn error_payload(request_id: &Option<String>, e: &NacosError) -> Payload {
    payload(&ErrorResponse {
        head: ResponseHead::fail(request_id, e.grpc_code(), e.to_string()),
    })
}

/// The request id of a decoded request (echoed in its answer, error or not).
fn request_id(m: &ClientMessage) -> Option<String> {
    use ClientMessage as M;
    match m {
        M::ServerCheck(r) => r.request_id.clone(),
        M::HealthCheck(r) => r.request_id.clone(),
        M::ConnectionSetup(r) => r.request_id.clone(),
        M::Instance(r) => r.request_id.clone(),
        M::BatchInstance(r) => r.request_id.clone(),
        M::PersistentInstance(r) => r.request_id.clone(),
        M::ServiceQuery(r) => r.request_id.clone(),
        M::Subscribe(r) => r.request_id.clone(),
        M::ServiceList(r) => r.request_id.clone(),
        M::NotifyAck(a) | M::OtherAck { ack: a, .. } => a.request_id.clone(),
    }
}

/// The node serves requests (ready, not stopping).
fn serving(api: &Api) -> Result<(), NacosError> {
    if api.node().shutdown.is_cancelled() {
        return Err(Rejection::ShuttingDown.into());
    }
    if !api.is_ready() {
        return Err(Rejection::NotReady.into());
    }
    Ok(())
}

/// A request's service: `group@@service` carries its group, a plain name takes `groupName`.
fn service_of(
    namespace: &Option<String>,
    service: &Option<String>,
    group: &Option<String>,
) -> Result<ServiceName, NacosError> {
    let g = names::service_name(service.as_deref(), group.as_deref())?;
    Ok(convert::service_name(
        names::namespace(namespace.as_deref()),
        g.group,
        g.service,
    ))
}

/// An instance of a register request, of the request's service.
fn instance_of(name: &ServiceName, i: GrpcInstance) -> Result<Instance, NacosError> {
    if i.ephemeral == Some(false) {
        return Err(ParamError::PersistentInstance.into());
    }
    if let Some(named) = names::given(i.service_name.as_deref()) {
        let g = names::service_name(Some(named), Some(&name.group))?;
        if g.service != &*name.service || g.group != &*name.group {
            return Err(ParamError::Invalid {
                name: "instance.serviceName",
                value: named.to_string(),
                expected: "the request's service",
            }
            .into());
        }
    }
    let ip = names::given(i.ip.as_deref()).ok_or(ParamError::Missing { name: "ip" })?;
    let port = i.port.ok_or(ParamError::Missing { name: "port" })?;
    let port = u16::try_from(port).map_err(|_| ParamError::Invalid {
        name: "port",
        value: port.to_string(),
        expected: "a port number (0 to 65535)",
    })?;
    let weight = i.weight.unwrap_or(1.0);
    if !(0.0..=WEIGHT_MAX).contains(&weight) {
        return Err(ParamError::WeightOutOfRange { weight }.into());
    }
    let key = InstanceKey {
        service: name.clone(),
        cluster: names::cluster(i.cluster_name.as_deref()).into(),
        ip: ip.into(),
        port,
    };
    Ok(convert::instance(
        key,
        weight,
        i.healthy.unwrap_or(true),
        i.enabled.unwrap_or(true),
        i.metadata,
    )?)
}

impl NacosGrpc for Handler {
    type BiStream = Outbound;

    async fn request(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let conn = self.conn_of(&request);
        let p = request.into_inner();
        let msg = match decode(p.type_name(), p.json()) {
            Ok(m) => m,
            Err(e) => return Ok(Response::new(error_payload(&None, &e.into()))),
        };
        let token = p
            .metadata
            .as_ref()
            .and_then(|m| m.headers.get(ACCESS_TOKEN_HEADER))
            .map(String::as_str);
        let rid = request_id(&msg);
        let answer = match conn {
            None => Err(NacosError::Unregistered),
            Some(conn) => {
                let answer = self.serve(&conn, msg, token).await;
                if matches!(
                    answer,
                    Err(NacosError::Rejected(Rejection::Unauthenticated))
                ) && conn.session.auth_failures_exhausted()
                {
                    self.close_refused(conn);
                }
                answer
            }
        };
        Ok(Response::new(
            answer.unwrap_or_else(|e| error_payload(&rid, &e)),
        ))
    }

    async fn request_bi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Outbound>, Status> {
        let Some(conn) = self.conn_of(&request) else {
            return Err(Status::unavailable("the connection is closed"));
        };
        if !conn.take_stream() {
            return Err(Status::already_exists(
                "this connection has its stream already",
            ));
        }
        let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE_MAX);
        let out = push::Outbox {
            tx,
            share: Share::new(self.api().node().metrics.clone()),
        };
        let inbound = request.into_inner();
        self.api()
            .node()
            .tracker
            .spawn(read_stream(self.reg.clone(), conn, inbound, out));
        // A payload's bytes go back to the connection's budget when tonic takes it to encode.
        let out = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|p| p.map(|q| Ok(q.into_inner())))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

impl Handler {
    /// Makes a request's accessToken the connection's caller (`docs/security.md` §4.1): the
    /// token verified last on this connection, not expired, is taken as it is; another one is
    /// verified (and becomes the connection's). No token, or one that is not valid, is
    /// `Unauthenticated`, counted towards `crate::api::AUTH_FAILURES_MAX`. A node without a token file
    /// checks nothing.
    fn authenticate(&self, conn: &Connection, token: Option<&str>) -> Result<(), NacosError> {
        if !self.auth.is_on() {
            return Ok(());
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(conn.session.refuse().into());
        };
        let now = self.api().now_ms();
        let mut last = conn.access.lock().unwrap();
        if let Some((known, until)) = &*last
            && known == token
            && now < *until
        {
            return Ok(());
        }
        match self.auth.verify(token) {
            Ok(a) => {
                conn.session.set_principal(a.principal);
                *last = Some((token.to_string(), a.expires_ms));
                Ok(())
            }
            Err(_) => Err(conn.session.refuse().into()),
        }
    }

    /// Closes a connection refused `AUTH_FAILURES_MAX` times, once its last answer is out.
    fn close_refused(&self, conn: Arc<Connection>) {
        info!(
            conn = conn.id(),
            remote = %conn.remote(),
            "closing Nacos gRPC connection after repeated authentication failures"
        );
        let reg = self.reg.clone();
        self.api().node().tracker.spawn(async move {
            tokio::time::sleep(REFUSED_CLOSE_DELAY).await;
            reg.close(&conn, false).await;
            conn.kill();
        });
    }

    async fn serve(
        &self,
        conn: &Arc<Connection>,
        msg: ClientMessage,
        token: Option<&str>,
    ) -> Result<Payload, NacosError> {
        use ClientMessage as M;
        if let M::ServerCheck(r) = &msg {
            // Answered before the setup (the Python client's first call); a node that cannot
            // serve says so, and the client tries the next server.
            serving(self.api())?;
            return Ok(payload(&ServerCheckResponse {
                head: ResponseHead::ok(&r.request_id),
                connection_id: conn.nacos_id(),
                support_ability_negotiation: true,
            }));
        }
        if !conn.wait_setup(self.reg.settings.setup_wait).await {
            return Err(NacosError::Unregistered);
        }
        // Health checks need no token, as in Nacos (the clients send theirs without one).
        if !matches!(
            msg,
            M::HealthCheck(_) | M::ConnectionSetup(_) | M::NotifyAck(_) | M::OtherAck { .. }
        ) {
            self.authenticate(conn, token)?;
        }
        match msg {
            M::ServerCheck(_) => unreachable!("answered above"),
            M::HealthCheck(r) => {
                serving(self.api())?;
                Ok(payload(&HealthCheckResponse {
                    head: ResponseHead::ok(&r.request_id),
                }))
            }
            M::Instance(r) => self.instance(conn, r).await,
            M::BatchInstance(r) => self.batch(conn, r).await,
            M::PersistentInstance(_) => Err(ParamError::PersistentInstance.into()),
            M::ServiceQuery(r) => self.query(conn, r),
            M::Subscribe(r) => self.subscribe(conn, r),
            M::ServiceList(r) => self.service_list(conn, r),
            M::ConnectionSetup(_) => Err(NacosError::WrongCall {
                type_name: "ConnectionSetupRequest",
            }),
            M::NotifyAck(_) => Err(NacosError::WrongCall {
                type_name: "NotifySubscriberResponse",
            }),
            M::OtherAck { type_name, .. } => Err(NacosError::WrongCall { type_name }),
        }
    }

    /// `InstanceRequest`: register replaces what this connection published for the service;
    /// deregister withdraws it (whatever ip and port it names, as Nacos does).
    async fn instance(
        &self,
        conn: &Arc<Connection>,
        r: InstanceRequest,
    ) -> Result<Payload, NacosError> {
        let name = service_of(&r.namespace, &r.service_name, &r.group_name)?;
        let kind = r.r#type.as_deref().unwrap_or_default();
        let instances = match kind {
            REGISTER_INSTANCE => {
                let i = r.instance.ok_or(ParamError::Missing { name: "instance" })?;
                vec![instance_of(&name, i)?]
            }
            DEREGISTER_INSTANCE => vec![],
            other => {
                return Err(ParamError::Invalid {
                    name: "type",
                    value: other.to_string(),
                    expected: "registerInstance or deregisterInstance",
                }
                .into());
            }
        };
        self.reg.publish(conn, &name, instances).await?;
        Ok(payload(&InstanceResponse {
            head: ResponseHead::ok(&r.request_id),
            r#type: kind.to_string(),
        }))
    }

    /// `BatchInstanceRequest`: this connection publishes exactly these instances of the service
    /// (none: withdraws them all).
    async fn batch(
        &self,
        conn: &Arc<Connection>,
        r: BatchInstanceRequest,
    ) -> Result<Payload, NacosError> {
        let name = service_of(&r.namespace, &r.service_name, &r.group_name)?;
        let kind = r.r#type.as_deref().unwrap_or_default();
        if kind != BATCH_REGISTER_INSTANCE {
            return Err(ParamError::Invalid {
                name: "type",
                value: kind.to_string(),
                expected: "batchRegisterInstance",
            }
            .into());
        }
        let given = r.instances.unwrap_or_default();
        if given.len() > BATCH_INSTANCES_MAX {
            return Err(Rejection::LimitExceeded {
                what: "instances in one request",
                max: BATCH_INSTANCES_MAX,
            }
            .into());
        }
        let instances = given
            .into_iter()
            .map(|i| instance_of(&name, i))
            .collect::<Result<Vec<_>, _>>()?;
        self.reg.publish(conn, &name, instances).await?;
        Ok(payload(&BatchInstanceResponse {
            head: ResponseHead::ok(&r.request_id),
            r#type: kind.to_string(),
        }))
    }

    /// The service's snapshot as this connection is answered it, filtered by `clusters_text`.
    fn info(
        &self,
        conn: &Connection,
        name: &ServiceName,
        clusters_text: &str,
        healthy_only: bool,
    ) -> Result<
        (
            crate::api::Snapshot,
            crate::frontend::nacos::model::answers::ServiceInfo,
        ),
        NacosError,
    > {
        let wanted = clusters(clusters_text);
        let store_cluster = match wanted[..] {
            [one] => one,
            _ => "",
        };
        let snap = conn.session.query(name, store_cluster, healthy_only)?;
        let s = snap.decode();
        let shape = InfoShape {
            grouped_name: false,
            clusters_text,
            clusters: &wanted,
            healthy_only,
            cache_millis: GRPC_CACHE_MILLIS,
            last_ref_time: conn.next_ref_time(name, self.api().now_ms()),
        };
        let info = convert::service_info(name, &s.instances, &shape);
        Ok((snap, info))
    }

    /// `ServiceQueryRequest`: the service's instances, once.
    fn query(&self, conn: &Connection, r: ServiceQueryRequest) -> Result<Payload, NacosError> {
        let name = service_of(&r.namespace, &r.service_name, &r.group_name)?;
        let text = r.cluster.as_deref().unwrap_or_default().trim();
        let healthy_only = r.healthy_only.or(r.health_only).unwrap_or(false);
        let (_, info) = self.info(conn, &name, text, healthy_only)?;
        Ok(payload(&QueryServiceResponse {
            head: ResponseHead::ok(&r.request_id),
            service_info: info,
        }))
    }

    /// `SubscribeServiceRequest`: subscribes (or with `subscribe: false` unsubscribes) this
    /// connection; answers the service's current snapshot either way.
    fn subscribe(
        &self,
        conn: &Connection,
        r: SubscribeServiceRequest,
    ) -> Result<Payload, NacosError> {
        let name = service_of(&r.namespace, &r.service_name, &r.group_name)?;
        let text = r.clusters.as_deref().unwrap_or_default().trim();
        if r.subscribe.unwrap_or(true) {
            let added = conn.add_subscription(&name, text)?;
            if added && let Err(e) = conn.session.subscribe(&name) {
                conn.remove_subscription(&name, text);
                return Err(e.into());
            }
            let (snap, info) = self.info(conn, &name, text, false)?;
            if added && conn.subscription(&name).len() == 1 {
                // The client has this snapshot now: the push its subscription owes is due only
                // if the service changes.
                push::note_answered(conn, &name, &snap);
            }
            Ok(payload(&SubscribeServiceResponse {
                head: ResponseHead::ok(&r.request_id),
                service_info: info,
            }))
        } else {
            if conn.remove_subscription(&name, text) {
                conn.session.unsubscribe(&name)?;
            }
            let (_, info) = self.info(conn, &name, text, false)?;
            Ok(payload(&SubscribeServiceResponse {
                head: ResponseHead::ok(&r.request_id),
                service_info: info,
            }))
        }
    }

    /// `ServiceListRequest`: one page (from 1) of a group's service names, sorted.
    fn service_list(
        &self,
        conn: &Connection,
        r: ServiceListRequest,
    ) -> Result<Payload, NacosError> {
        let namespace = names::namespace(r.namespace.as_deref());
        let group = names::group(r.group_name.as_deref());
        let page_no = r.page_no.unwrap_or(1).max(1) - 1;
        let page_no = u32::try_from(page_no).unwrap_or(u32::MAX);
        // Out of u16 is out of the API's page bound too, which refuses it with its reason.
        let page_size = u16::try_from(r.page_size.unwrap_or(10)).unwrap_or(0);
        let list = self.api().list_group_services(
            &conn.session.principal(),
            namespace,
            group,
            page_no,
            page_size,
        )?;
        Ok(payload(&ServiceListResponse {
            head: ResponseHead::ok(&r.request_id),
            count: list.total as usize,
            service_names: list
                .services
                .iter()
                .map(|s| s.service.to_string())
                .collect(),
        }))
    }
}

/// Reads the connection's stream until it ends: its setup (answered with `SetupAckRequest`,
/// after which its requests are served and its pushes run) and the acks of pushes. Anything
/// else on the stream ends it. The stream's end is the connection's end.
async fn read_stream(
    reg: Arc<Registry>,
    conn: Arc<Connection>,
    mut inbound: Streaming<Payload>,
    out: push::Outbox,
) {
    let node = reg.api.node().clone();
    loop {
        let next = tokio::select! {
            _ = conn.stop.cancelled() => break,
            _ = node.shutdown.cancelled() => break,
            m = inbound.message() => m,
        };
        let p = match next {
            Ok(Some(p)) => p,
            Ok(None) => {
                debug!(conn = conn.id(), "Nacos client ended its stream");
                break;
            }
            Err(status) => {
                debug!(conn = conn.id(), %status, "Nacos client stream failed");
                break;
            }
        };
        match decode(p.type_name(), p.json()) {
            Ok(ClientMessage::ConnectionSetup(s)) => {
                if !conn.set_up() {
                    continue;
                }
                debug!(
                    conn = conn.id(),
                    client = s.client_version.as_deref().unwrap_or_default(),
                    "Nacos gRPC connection set up"
                );
                let ack = SetupAckRequest {
                    head: ServerRequestHead::new(0, "internal"),
                    ability_table: None,
                };
                // The queue is empty still: this cannot wait.
                out.try_send(payload(&ack)).await;
                node.tracker
                    .spawn(push::run(reg.clone(), conn.clone(), out.clone()));
            }
            Ok(ClientMessage::NotifyAck(a)) => conn.ack(a.request_id()),
            Ok(ClientMessage::OtherAck { .. }) => {}
            // An answer to a server request this server does not track: harmless.
            Err(BodyError::UnknownType { type_name }) if type_name.ends_with("Response") => {}
            Ok(other) => {
                info!(
                    conn = conn.id(),
                    request = ?std::mem::discriminant(&other),
                    "a request on the stream (requests are unary calls); closing the connection"
                );
                break;
            }
            Err(e) => {
                info!(conn = conn.id(), error = %e, "bad message on the stream; closing the connection");
                break;
            }
        }
    }
    drop(out);
    reg.close(&conn, node.shutdown.is_cancelled()).await;
}
