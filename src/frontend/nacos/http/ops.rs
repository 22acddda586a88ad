//! The operators' endpoints of the Nacos HTTP API: the server status the Node client checks,
//! the health probes, and the member list. They answer also while the node loads or stops
//! (that is what they report).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;

use super::{Http, error, json, params, request, text};
use crate::auth::Principal;
use crate::frontend::nacos::error::NacosError;
use crate::frontend::nacos::model::answers::{Member, Metrics, RestResult};
use crate::frontend::nacos::model::params::MetricsParams;

/// What readiness answers while the node cannot serve (Nacos's words).
const NOT_IN_READINESS: &str = "Naming is not in readiness";

fn serving(h: &Http) -> bool {
    h.api.is_ready() && !h.api.node().shutdown.is_cancelled()
}

/// `GET /nacos/v1/ns/operator/metrics`: `{"status":"UP"}` while the node serves ("DOWN" while
/// it loads or stops); with `onlyStatus=false` also the counts.
pub async fn metrics(State(h): State<Arc<Http>>, req: Request) -> Response {
    let only_status = async {
        let p = params(req).await?;
        Ok::<_, NacosError>(p.to::<MetricsParams>().only_status()?)
    };
    let only_status = match only_status.await {
        Ok(v) => v,
        Err(e) => return error::<false>(e),
    };
    let status = if serving(&h) { "UP" } else { "DOWN" }.to_string();
    let mut m = Metrics {
        status,
        service_count: None,
        instance_count: None,
        subscribe_count: None,
        client_count: None,
        connection_based_client_count: None,
        ephemeral_ip_port_client_count: None,
        responsible_client_count: None,
    };
    if !only_status {
        let counts = h.api.counts();
        let connections = h.grpc_connections.load(Ordering::Relaxed);
        let me = h.api.node_id();
        // A count, like the others here (these are probes): read as the node itself.
        let owned = h
            .api
            .cluster_status(&Principal::anyone())
            .ok()
            .and_then(|s| s.members.iter().find(|m| m.id == me).map(|m| m.owned))
            .unwrap_or(0);
        m.service_count = Some(counts.services);
        m.instance_count = Some(counts.instances);
        m.subscribe_count = Some(counts.subscriptions);
        m.client_count = Some(connections);
        m.connection_based_client_count = Some(connections);
        m.responsible_client_count = Some(owned);
    }
    json(StatusCode::OK, &m)
}

/// `GET /nacos/v1/console/health/liveness`: the process answers.
pub async fn liveness() -> Response {
    text(StatusCode::OK, "OK")
}

/// `GET /nacos/v1/console/health/readiness`: `OK` once the node serves; 500 while it loads or
/// stops.
pub async fn readiness(State(h): State<Arc<Http>>) -> Response {
    if serving(&h) {
        text(StatusCode::OK, "OK")
    } else {
        text(StatusCode::INTERNAL_SERVER_ERROR, NOT_IN_READINESS)
    }
}

/// `GET /nacos/v1/core/cluster/nodes`: the members as this node sees them. Addresses are the
/// members' peer addresses (the address list is the identity of a Distro cluster); `extendInfo`
/// carries each member's node id and the live instances it owns. Needs a caller (it is a map of
/// the cluster: docs/security.md §2.4).
pub async fn cluster_nodes(State(h): State<Arc<Http>>, req: Request) -> Response {
    let who = match request(&h, req).await {
        Ok((_, who)) => who,
        Err(e) => return error::<false>(e),
    };
    let status = match h.api.cluster_status(&who) {
        Ok(s) => s,
        Err(r) => return error::<false>(NacosError::Rejected(r)),
    };
    let members: Vec<Member> = status
        .members
        .iter()
        .map(|m| {
            let (ip, port) = match m.addr.rsplit_once(':') {
                Some((ip, port)) => (
                    ip.trim_matches(['[', ']']).to_string(),
                    port.parse().unwrap_or(0),
                ),
                None => (m.addr.to_string(), 0),
            };
            Member {
                ip,
                port,
                state: if m.up { "UP" } else { "DOWN" }.into(),
                address: m.addr.to_string(),
                extend_info: BTreeMap::from([
                    ("nodeId".to_string(), m.id.into()),
                    ("ownedInstances".to_string(), m.owned.into()),
                ]),
                fail_access_cnt: 0,
            }
        })
        .collect();
    json(
        StatusCode::OK,
        &RestResult {
            code: 200,
            message: None,
            data: members,
        },
    )
}
