//! The HTTP API's parameters. Nacos reads every parameter from the query string and the form
//! body alike (the Node client puts everything in the query string even for POST, PUT and
//! DELETE; a Java or curl user may post a form), and the first value of a name wins. Parameter
//! names are case-sensitive; unknown ones are ignored (the clients send `udpPort`, `clientIP`,
//! `app`, `username`… that nothing here needs).
//!
//! Every parameter struct keeps the raw text of each field (`""` = not given, which is also how
//! Nacos treats a blank value); its `resolve` method applies Nacos's rules and returns typed
//! values or a [`ParamError`] carrying Nacos's own words.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::names::{self, GroupedName, MetadataError, ServiceNameError};

/// Most parameters one request may carry (query and form together). A Nacos request has about
/// fifteen; the bound keeps a hostile request from making a large map.
pub const PARAMS_MAX: usize = 64;

/// Largest query string plus form body read. Metadata is the only large parameter: 64 entries of
/// up to 255 + 4096 bytes (the model's limits) fit with room to spare.
pub const PARAMS_BYTES_MAX: usize = 512 << 10;

/// Largest instance weight (as in Nacos).
pub const WEIGHT_MAX: f64 = 10_000.0;

/// Why a request's parameters cannot be used. The messages are Nacos's where it has one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("Param '{name}' is required.")]
    Missing { name: &'static str },
    #[error("Param '{name}' is not {expected}: '{value}'")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    ServiceName(#[from] ServiceNameError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("instance format invalid: The weights range from 0.0 to {WEIGHT_MAX:.1}")]
    WeightOutOfRange { weight: f64 },
    #[error(
        "persistent instances are not supported: this registry keeps ephemeral instances only \
         (register with ephemeral=true)"
    )]
    PersistentInstance,
    #[error("Param 'beat' is not a valid beat: {reason}")]
    BadBeat { reason: String },
    #[error("too many parameters: {count} (at most {max})")]
    TooMany { count: usize, max: usize },
    #[error("parameters too large: {len} bytes (at most {max})")]
    TooLarge { len: usize, max: usize },
}

/// The v2 API's error codes (`code` of its envelope) for the errors here.
impl ParamError {
    pub fn v2_code(&self) -> super::answers::V2Code {
        use super::answers::V2Code;
        match self {
            ParamError::Missing { .. } | ParamError::ServiceName(ServiceNameError::Missing) => {
                V2Code::ParameterMissing
            }
            ParamError::ServiceName(_) => V2Code::ServiceNameError,
            ParamError::Metadata(_) => V2Code::InstanceMetadataError,
            ParamError::WeightOutOfRange { .. } => V2Code::WeightError,
            _ => V2Code::ParameterValidateError,
        }
    }
}

/// The parameters of one request, query string first, then form body; the first value of a
/// name wins (as a servlet's `getParameter` does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawParams {
    pairs: Vec<(String, String)>,
}

impl RawParams {
    /// Decodes `application/x-www-form-urlencoded` text from the query string and the body.
    pub fn parse(query: Option<&str>, form: Option<&[u8]>) -> Result<RawParams, ParamError> {
        let len = query.map_or(0, str::len) + form.map_or(0, <[u8]>::len);
        if len > PARAMS_BYTES_MAX {
            return Err(ParamError::TooLarge {
                len,
                max: PARAMS_BYTES_MAX,
            });
        }
        let mut out = RawParams::default();
        let sources = query.map(str::as_bytes).into_iter().chain(form);
        for (name, value) in sources.flat_map(form_urlencoded::parse) {
            if out.pairs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if out.pairs.len() == PARAMS_MAX {
                return Err(ParamError::TooMany {
                    count: PARAMS_MAX + 1,
                    max: PARAMS_MAX,
                });
            }
            out.pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(out)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parameters as one of the structs below.
    pub fn to<'de, T: Deserialize<'de>>(&self) -> T {
        let pairs = self.pairs.iter().cloned();
        let de = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(pairs);
        // Every field is a String with a default and unknown names are ignored, so a map of
        // strings always fits.
        T::deserialize(de).expect("string fields with defaults accept any string map")
    }
}

fn given(v: &str) -> Option<&str> {
    names::given(Some(v))
}

fn required<'a>(name: &'static str, v: &'a str) -> Result<&'a str, ParamError> {
    let v = v.trim();
    if v.is_empty() {
        Err(ParamError::Missing { name })
    } else {
        Ok(v)
    }
}

fn port(name: &'static str, v: &str) -> Result<u16, ParamError> {
    let v = required(name, v)?;
    v.parse().map_err(|_| ParamError::Invalid {
        name,
        value: v.to_string(),
        expected: "a port number (0 to 65535)",
    })
}

fn boolean(name: &'static str, v: &str, default: bool) -> Result<bool, ParamError> {
    match given(v) {
        None => Ok(default),
        Some(t) => names::boolean(t).ok_or_else(|| ParamError::Invalid {
            name,
            value: t.to_string(),
            expected: "a boolean (true or false)",
        }),
    }
}

fn weight(v: &str) -> Result<Option<f64>, ParamError> {
    let Some(t) = given(v) else { return Ok(None) };
    let w: f64 = t.parse().map_err(|_| ParamError::Invalid {
        name: "weight",
        value: t.to_string(),
        expected: "a number",
    })?;
    if !(0.0..=WEIGHT_MAX).contains(&w) {
        return Err(ParamError::WeightOutOfRange { weight: w });
    }
    Ok(Some(w))
}

fn count(name: &'static str, v: &str) -> Result<u32, ParamError> {
    let v = required(name, v)?;
    v.parse().map_err(|_| ParamError::Invalid {
        name,
        value: v.to_string(),
        expected: "a whole number",
    })
}

/// An instance's identity as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef<'a> {
    pub namespace: &'a str,
    pub group: &'a str,
    pub service: &'a str,
    pub cluster: &'a str,
    pub ip: &'a str,
    pub port: u16,
}

/// `POST|PUT|DELETE /nacos/v1/ns/instance` (and v2): register, update, deregister.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceParams {
    pub namespace_id: String,
    pub service_name: String,
    pub group_name: String,
    pub cluster_name: String,
    /// Older name of `clusterName`, still read by Nacos when `clusterName` is blank.
    pub cluster: String,
    pub ip: String,
    pub port: String,
    pub weight: String,
    /// v1 spelling; v2 spells it `enabled`, and Nacos reads `enabled` first.
    pub enable: String,
    pub enabled: String,
    pub healthy: String,
    pub ephemeral: String,
    pub metadata: String,
}

/// A register or update as a request means it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceForm<'a> {
    pub key: InstanceRef<'a>,
    /// Absent on an update that does not change it; 1.0 on a register.
    pub weight: Option<f64>,
    pub enabled: bool,
    pub healthy: bool,
    pub metadata: BTreeMap<String, String>,
}

impl InstanceParams {
    /// The instance's identity: what a deregistration needs.
    pub fn key(&self) -> Result<InstanceRef<'_>, ParamError> {
        let GroupedName { group, service } =
            names::service_name(Some(&self.service_name), Some(&self.group_name))?;
        let cluster = given(&self.cluster_name)
            .or_else(|| given(&self.cluster))
            .unwrap_or(names::DEFAULT_CLUSTER);
        Ok(InstanceRef {
            namespace: names::namespace(Some(&self.namespace_id)),
            group,
            service,
            cluster,
            ip: required("ip", &self.ip)?,
            port: port("port", &self.port)?,
        })
    }

    /// Refuses `ephemeral=false`: persistent instances do not exist here.
    pub fn check_ephemeral(&self) -> Result<(), ParamError> {
        if boolean("ephemeral", &self.ephemeral, true)? {
            Ok(())
        } else {
            Err(ParamError::PersistentInstance)
        }
    }

    /// A register (or update): the identity, the attributes with Nacos's defaults.
    pub fn form(&self) -> Result<InstanceForm<'_>, ParamError> {
        let key = self.key()?;
        self.check_ephemeral()?;
        let enabled = if given(&self.enabled).is_some() {
            boolean("enabled", &self.enabled, true)?
        } else {
            boolean("enable", &self.enable, true)?
        };
        Ok(InstanceForm {
            key,
            weight: weight(&self.weight)?,
            enabled,
            healthy: boolean("healthy", &self.healthy, true)?,
            metadata: names::metadata(&self.metadata)?,
        })
    }
}

/// `GET /nacos/v1/ns/instance/list` (v2: the same, `clusterName` for `clusters`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListParams {
    pub namespace_id: String,
    pub service_name: String,
    pub group_name: String,
    /// Comma-separated cluster names; blank = all. Echoed in the answer's `clusters` as given
    /// (the Node client keys its cache by `name@@clusters`).
    pub clusters: String,
    /// v2's name for `clusters`.
    pub cluster_name: String,
    pub healthy_only: String,
    /// The Node client's UDP push port; nothing is pushed over UDP here (see docs/nacos.md).
    pub udp_port: String,
}

/// A list query as a request means it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery<'a> {
    pub namespace: &'a str,
    pub group: &'a str,
    pub service: &'a str,
    /// As given (trimmed), for the answer's `clusters`.
    pub clusters_text: &'a str,
    /// The clusters to keep; empty = all.
    pub clusters: Vec<&'a str>,
    pub healthy_only: bool,
}

impl ListParams {
    pub fn query(&self) -> Result<ListQuery<'_>, ParamError> {
        let GroupedName { group, service } =
            names::service_name(Some(&self.service_name), Some(&self.group_name))?;
        let text = if self.clusters.trim().is_empty() {
            self.cluster_name.trim()
        } else {
            self.clusters.trim()
        };
        Ok(ListQuery {
            namespace: names::namespace(Some(&self.namespace_id)),
            group,
            service,
            clusters_text: text,
            clusters: clusters(text),
            healthy_only: boolean("healthyOnly", &self.healthy_only, false)?,
        })
    }
}

/// A comma-separated cluster list; blank entries dropped.
pub fn clusters(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `PUT /nacos/v1/ns/instance/beat` (and v2).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BeatParams {
    pub namespace_id: String,
    pub service_name: String,
    pub group_name: String,
    pub cluster_name: String,
    pub ip: String,
    pub port: String,
    /// The beat JSON ([`BeatInfo`]); absent in a light beat.
    pub beat: String,
}

/// The `beat` parameter's JSON (Nacos's `RsInfo`). The clients send `serviceName`, `ip`, `port`,
/// `cluster`, `weight`, `metadata` (an object), the Python client `ephemeral`, the Node client
/// also `scheduled`; unknown names are ignored.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BeatInfo {
    pub service_name: Option<String>,
    pub ip: Option<String>,
    pub port: Option<u32>,
    pub cluster: Option<String>,
    pub weight: Option<f64>,
    pub ephemeral: Option<bool>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A beat as a request means it.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat<'a> {
    pub key: InstanceRef<'a>,
    /// What the beat carried to register the instance again if it is unknown (a full beat);
    /// `None` for a light beat, which then answers code 20404.
    pub full: Option<BeatBody>,
}

/// The instance attributes a full beat carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatBody {
    pub weight: f64,
    pub metadata: BTreeMap<String, String>,
}

impl BeatParams {
    /// Parses the beat JSON (if any) into `info`, which the resolved [`Beat`] borrows from.
    pub fn info(&self) -> Result<Option<BeatInfo>, ParamError> {
        match given(&self.beat) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| ParamError::BadBeat {
                    reason: e.to_string(),
                }),
        }
    }

    /// The beat: ip, port and cluster from the beat JSON when it has them (as Nacos does), else
    /// from the parameters.
    pub fn beat<'a>(&'a self, info: Option<&'a BeatInfo>) -> Result<Beat<'a>, ParamError> {
        let GroupedName { group, service } =
            names::service_name(Some(&self.service_name), Some(&self.group_name))?;
        let cluster = info
            .and_then(|b| names::given(b.cluster.as_deref()))
            .or_else(|| given(&self.cluster_name))
            .unwrap_or(names::DEFAULT_CLUSTER);
        let ip = match info.and_then(|b| b.ip.as_deref()) {
            Some(ip) => required("ip", ip)?,
            None => required("ip", &self.ip)?,
        };
        let port = match info.and_then(|b| b.port) {
            Some(p) => u16::try_from(p).map_err(|_| ParamError::BadBeat {
                reason: format!("port {p} is not a port number"),
            })?,
            None => port("port", &self.port)?,
        };
        if info.and_then(|b| b.ephemeral) == Some(false) {
            return Err(ParamError::PersistentInstance);
        }
        let full = match info {
            None => None,
            Some(b) => {
                let weight = b.weight.unwrap_or(1.0);
                if !(0.0..=WEIGHT_MAX).contains(&weight) {
                    return Err(ParamError::WeightOutOfRange { weight });
                }
                let metadata = match &b.metadata {
                    None => BTreeMap::new(),
                    Some(m) => {
                        names::metadata_object(m.clone()).ok_or_else(|| ParamError::BadBeat {
                            reason: "metadata values must be text, numbers or booleans".into(),
                        })?
                    }
                };
                Some(BeatBody { weight, metadata })
            }
        };
        Ok(Beat {
            key: InstanceRef {
                namespace: names::namespace(Some(&self.namespace_id)),
                group,
                service,
                cluster,
                ip,
                port,
            },
            full,
        })
    }
}

/// `GET /nacos/v1/ns/instance` (and v2): one instance's detail.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceDetailParams {
    pub namespace_id: String,
    pub service_name: String,
    pub group_name: String,
    pub cluster: String,
    pub cluster_name: String,
    pub ip: String,
    pub port: String,
}

impl InstanceDetailParams {
    pub fn key(&self) -> Result<InstanceRef<'_>, ParamError> {
        let GroupedName { group, service } =
            names::service_name(Some(&self.service_name), Some(&self.group_name))?;
        Ok(InstanceRef {
            namespace: names::namespace(Some(&self.namespace_id)),
            group,
            service,
            cluster: given(&self.cluster_name)
                .or_else(|| given(&self.cluster))
                .unwrap_or(names::DEFAULT_CLUSTER),
            ip: required("ip", &self.ip)?,
            port: port("port", &self.port)?,
        })
    }
}

/// `GET /nacos/v1/ns/service/list` (and v2).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceListParams {
    pub namespace_id: String,
    pub group_name: String,
    pub page_no: String,
    pub page_size: String,
}

/// A page of service names as a request means it (pages count from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePage<'a> {
    pub namespace: &'a str,
    pub group: &'a str,
    pub page_no: u32,
    pub page_size: u32,
}

impl ServiceListParams {
    /// v1 requires both page parameters (as Nacos does); v2 defaults them to 1 and 20.
    pub fn page(&self, v1: bool) -> Result<ServicePage<'_>, ParamError> {
        let (page_no, page_size) = if v1 {
            (
                count("pageNo", &self.page_no)?,
                count("pageSize", &self.page_size)?,
            )
        } else {
            (
                given(&self.page_no).map_or(Ok(1), |v| count("pageNo", v))?,
                given(&self.page_size).map_or(Ok(20), |v| count("pageSize", v))?,
            )
        };
        Ok(ServicePage {
            namespace: names::namespace(Some(&self.namespace_id)),
            group: names::group(Some(&self.group_name)),
            page_no,
            page_size,
        })
    }
}

/// `GET /nacos/v1/ns/operator/metrics`: `onlyStatus` defaults to true (just `{"status":…}`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsParams {
    pub only_status: String,
}

impl MetricsParams {
    pub fn only_status(&self) -> Result<bool, ParamError> {
        boolean("onlyStatus", &self.only_status, true)
    }
}

#[cfg(test)]
mod tests;
