//! The naming endpoints of v1 and v2 (`docs/nacos.md` §4–5). Each handler reads its parameters
//! with the model's rules, calls the request API, and answers in the version's shape; `V2`
//! picks the shape (the envelope) and nothing else.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;

use super::{Http, data, error, json, ok, request};
use crate::api::Rejection;
use crate::auth::Principal;
use crate::frontend::nacos::convert::{self, HTTP_CACHE_MILLIS, InfoShape};
use crate::frontend::nacos::error::NacosError;
use crate::frontend::nacos::model::answers::{
    BEAT_OK, BEAT_UNKNOWN_INSTANCE, BeatAnswer, InstanceDetail, InstanceDetailV2, ServiceList,
    ServiceNames,
};
use crate::frontend::nacos::model::names;
use crate::frontend::nacos::model::params::{
    BeatParams, InstanceDetailParams, InstanceParams, ListParams, ServiceListParams,
};
use crate::model::{Instance, Lease};

type St = State<Arc<Http>>;

/// `POST /instance`: registers a lease-bound instance (the client beats it).
pub async fn register<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: InstanceParams = raw.to();
        let f = p.form()?;
        let weight = f.weight.unwrap_or(1.0);
        let inst = convert::instance(
            convert::key(&f.key),
            weight,
            f.healthy,
            f.enabled,
            f.metadata,
        )?;
        write_instance(&h, &who, inst).await?;
        Ok(())
    }
    .await;
    ok::<V2>(r)
}

/// `PUT /instance`: changes the weight, enabled flag or metadata of a registered instance (what
/// a parameter does not give stays as it is); 404 for an instance that is not registered. The
/// instance is registered again with its new attributes, which renews its lease.
pub async fn update<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: InstanceParams = raw.to();
        let f = p.form()?;
        let key = convert::key(&f.key);
        let current = h.api.instance(&who, &key).map_err(not_found)?;
        let enabled_given = names::given(Some(&p.enabled))
            .or(names::given(Some(&p.enable)))
            .is_some();
        let metadata = if names::given(Some(&p.metadata)).is_some() {
            f.metadata
        } else {
            convert::metadata_map(&current)
        };
        let inst = convert::instance(
            key,
            f.weight.unwrap_or(current.weight),
            f.healthy,
            if enabled_given {
                f.enabled
            } else {
                current.enabled
            },
            metadata,
        )?;
        write_instance(&h, &who, inst).await?;
        Ok(())
    }
    .await;
    ok::<V2>(r)
}

/// `DELETE /instance`: `ok` also when the instance was not there (as Nacos answers).
pub async fn deregister<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: InstanceParams = raw.to();
        let key = convert::key(&p.key()?);
        p.check_ephemeral()?;
        let api = h.api.clone();
        carried_out(&h, async move { api.deregister(&who, &[key]).await }).await?;
        Ok(())
    }
    .await;
    ok::<V2>(r)
}

/// Runs a write to its end in a task of the node, so that a client that goes away mid-request
/// (hyper then drops the handler) does not leave it half done: a write a node took in is
/// carried out, acknowledged or not.
async fn carried_out<T: Send + 'static>(
    h: &Http,
    write: impl Future<Output = Result<T, Rejection>> + Send + 'static,
) -> Result<T, Rejection> {
    h.api
        .node()
        .tracker
        .spawn(write)
        .await
        .unwrap_or(Err(Rejection::ShuttingDown))
}

async fn write_instance(h: &Http, who: &Principal, inst: Instance) -> Result<u32, Rejection> {
    let (api, who) = (h.api.clone(), who.clone());
    carried_out(h, async move { api.register(&who, &[inst]).await }).await
}

/// An API "not found" is Nacos's "no matched ip found!".
fn not_found(r: Rejection) -> NacosError {
    match r {
        Rejection::NotFound { .. } => NacosError::NoSuchInstance,
        other => other.into(),
    }
}

/// `GET /instance`: one instance.
pub async fn detail<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: InstanceDetailParams = raw.to();
        let k = p.key()?;
        let v = h.api.instance(&who, &convert::key(&k)).map_err(not_found)?;
        let service = names::grouped(k.group, k.service);
        let instance_id = names::instance_id(k.ip, k.port, k.cluster, k.group, k.service);
        Ok::<_, NacosError>((service, instance_id, v))
    }
    .await;
    match r {
        Err(e) => error::<V2>(e),
        Ok((service, instance_id, v)) => {
            let metadata = convert::metadata_map(&v);
            if V2 {
                data::<true, _>(Ok(InstanceDetailV2 {
                    service_name: service,
                    ip: v.ip.to_string(),
                    port: v.port,
                    cluster_name: v.cluster.to_string(),
                    weight: v.weight,
                    healthy: v.healthy,
                    instance_id,
                    metadata,
                }))
            } else {
                data::<false, _>(Ok(InstanceDetail {
                    service,
                    ip: v.ip.to_string(),
                    port: v.port,
                    cluster_name: v.cluster.to_string(),
                    weight: v.weight,
                    healthy: v.healthy,
                    instance_id,
                    metadata,
                }))
            }
        }
    }
}

/// `GET /instance/list`: the service's instances; an unknown service is an empty list.
pub async fn list<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: ListParams = raw.to();
        let q = p.query()?;
        let name = convert::service_name(q.namespace, q.group, q.service);
        // One cluster is filtered by the store (its cached snapshot serves "all").
        let store_cluster = match q.clusters[..] {
            [one] => one,
            _ => "",
        };
        let snap = h
            .api
            .query(&who, &name, store_cluster, q.healthy_only)?
            .decode();
        let shape = InfoShape {
            grouped_name: true,
            clusters_text: q.clusters_text,
            clusters: &q.clusters,
            healthy_only: q.healthy_only,
            cache_millis: HTTP_CACHE_MILLIS,
            last_ref_time: h.api.now_ms(),
        };
        Ok(convert::service_info(&name, &snap.instances, &shape))
    }
    .await;
    data::<V2, _>(r)
}

/// `PUT /instance/beat`: renews the instance's lease. An unknown instance is registered again
/// from a full beat (one carrying the `beat` JSON: how the Node and Python clients' instances
/// come back after a node lost them), or answered code 20404 for a light beat so that the
/// client registers it. The v2 beat answers without the envelope, as Nacos does.
pub async fn beat<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: BeatParams = raw.to();
        let info = p.info()?;
        let b = p.beat(info.as_ref())?;
        let key = convert::key(&b.key);
        let (api, k, w) = (h.api.clone(), key.clone(), who.clone());
        let unknown = !carried_out(&h, async move { api.beat(&w, &[k]).await })
            .await?
            .is_empty();
        let default_interval = Lease::default().beat_ms;
        let answer = |code, interval_ms: u32| BeatAnswer {
            client_beat_interval: interval_ms as u64,
            code,
            light_beat_enabled: true,
        };
        match (unknown, b.full) {
            (false, Some(full)) => {
                let interval =
                    convert::lease(&full.metadata).map_or(default_interval, |l| l.beat_ms);
                Ok(answer(BEAT_OK, interval))
            }
            (false, None) => {
                let interval = h
                    .api
                    .instance(&who, &key)
                    .ok()
                    .and_then(|v| convert::lease(&convert::metadata_map(&v)).ok())
                    .map_or(default_interval, |l| l.beat_ms);
                Ok(answer(BEAT_OK, interval))
            }
            (true, Some(full)) => {
                let inst = convert::instance(key, full.weight, true, true, full.metadata)?;
                let interval = inst.lease.beat_ms;
                write_instance(&h, &who, inst).await?;
                Ok(answer(BEAT_OK, interval))
            }
            (true, None) => Ok(answer(BEAT_UNKNOWN_INSTANCE, default_interval)),
        }
    }
    .await;
    match r {
        Ok(a) => json(StatusCode::OK, &a),
        Err(e) => error::<V2>(e),
    }
}

/// `GET /service/list`: one page (from 1) of the names of a group's services, sorted.
pub async fn service_list<const V2: bool>(State(h): St, req: Request) -> Response {
    let r = async {
        let (raw, who) = request(&h, req).await?;
        let p: ServiceListParams = raw.to();
        let page = p.page(!V2)?;
        // Past u16 it is past the API's page bound anyway, which refuses it with its reason.
        let size = u16::try_from(page.page_size).unwrap_or(u16::MAX);
        let list = h.api.list_group_services(
            &who,
            page.namespace,
            page.group,
            page.page_no.saturating_sub(1),
            size,
        )?;
        let names: Vec<String> = list
            .services
            .iter()
            .map(|s| s.service.to_string())
            .collect();
        Ok::<_, NacosError>((list.total as usize, names))
    }
    .await;
    match r {
        Ok((count, names)) if V2 => data::<true, _>(Ok(ServiceNames {
            count,
            services: names,
        })),
        Ok((count, doms)) => data::<false, _>(Ok(ServiceList { count, doms })),
        Err(e) => error::<V2>(e),
    }
}
