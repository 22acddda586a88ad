//! The HTTP API's answers: the v1 shapes exactly as Nacos returns them (and as the clients parse
//! them), the v2 `{code, message, data}` envelope and its codes. [`ServiceInfo`] is also the
//! service snapshot of the gRPC answers and pushes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A service's instances as every Nacos API returns them (`instance/list`, the gRPC query and
/// subscribe answers, the gRPC push).
///
/// What the clients rely on: the Rust client requires `name`, `groupName`, `clusters`,
/// `cacheMillis`, `lastRefTime`, `checksum` and `reachProtectionThreshold` to be present and
/// not null; the Python client requires `name` and `groupName` and that `hosts` is a list, not
/// null; the Node client keys its cache by `name@@clusters`, so over HTTP v1 `name` is the
/// grouped name and `clusters` echoes the request's parameter. Both the Python and the Rust
/// client drop an answer whose `lastRefTime` is not newer than the last one they took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// v1 HTTP: `group@@service`; gRPC: the plain service name (the group is `groupName`).
    pub name: String,
    pub group_name: String,
    /// The clusters the request asked for, as given ("" = all).
    pub clusters: String,
    /// How long a client may cache this answer; the Node client polls at this period, the Rust
    /// client re-queries a subscribed service at six times it.
    pub cache_millis: u64,
    pub hosts: Vec<Host>,
    /// Milliseconds; must grow from one answer to the next for a client to take it.
    pub last_ref_time: u64,
    pub checksum: String,
    /// Nacos's spelling (`allIPs`); the Rust client also reads `allIps`, the Python client
    /// defaults it.
    #[serde(rename = "allIPs")]
    pub all_ips: bool,
    pub reach_protection_threshold: bool,
    /// Nacos serializes `isValid()`: true.
    pub valid: bool,
}

/// One instance in a [`ServiceInfo`] (Nacos's `Instance` as Jackson writes it). The Rust client
/// requires `ip`, `port`, `weight`, `healthy`, `enabled`, `ephemeral` and `metadata`; the
/// Python client requires every string to be a string, not null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// `ip#port#cluster#group@@service`.
    pub instance_id: String,
    pub ip: String,
    pub port: u16,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    /// Always true here.
    pub ephemeral: bool,
    pub cluster_name: String,
    /// `group@@service`.
    pub service_name: String,
    pub metadata: BTreeMap<String, String>,
    /// The lease, in milliseconds (Nacos derives these from the `preserved.*` metadata).
    pub instance_heart_beat_interval: u64,
    #[serde(rename = "instanceHeartBeatTimeOut")]
    pub instance_heart_beat_timeout: u64,
    pub ip_delete_timeout: u64,
    /// Always "simple".
    pub instance_id_generator: String,
}

/// `PUT /nacos/v1/ns/instance/beat` (v1 and v2 alike: the v2 beat has no envelope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BeatAnswer {
    /// The interval the client should beat at, in milliseconds: the instance's own when its
    /// metadata sets one, else the server's (the Node client adopts it).
    pub client_beat_interval: u64,
    /// [`BEAT_OK`] or [`BEAT_UNKNOWN_INSTANCE`].
    pub code: u32,
    /// True: clients may send light beats (no `beat` JSON) and register again on 20404.
    pub light_beat_enabled: bool,
}

/// The beat was taken.
pub const BEAT_OK: u32 = 10200;
/// A light beat for an instance this registry does not hold: the client registers it again.
pub const BEAT_UNKNOWN_INSTANCE: u32 = 20404;

/// `GET /nacos/v1/ns/service/list`: the total count and one page of names, without their group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub count: usize,
    pub doms: Vec<String>,
}

/// `GET /nacos/v2/ns/service/list`'s `data`: the total count and one page of names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceNames {
    pub count: usize,
    pub services: Vec<String>,
}

/// `GET /nacos/v1/ns/operator/metrics`: `{"status":"UP"}`, the counts only with
/// `onlyStatus=false`. The Node client reads `status == "UP"` as "server healthy".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// "UP" when the node is ready, "DOWN" while it loads or shuts down.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_based_client_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_ip_port_client_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responsible_client_count: Option<u64>,
}

/// `GET /nacos/v1/ns/instance`: one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceDetail {
    /// `group@@service`.
    pub service: String,
    pub ip: String,
    pub port: u16,
    pub cluster_name: String,
    pub weight: f64,
    pub healthy: bool,
    pub instance_id: String,
    pub metadata: BTreeMap<String, String>,
}

/// `GET /nacos/v2/ns/instance`'s `data`: one instance (v1's [`InstanceDetail`] with
/// `serviceName` for `service`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceDetailV2 {
    /// `group@@service`.
    pub service_name: String,
    pub ip: String,
    pub port: u16,
    pub cluster_name: String,
    pub weight: f64,
    pub healthy: bool,
    pub instance_id: String,
    pub metadata: BTreeMap<String, String>,
}

/// `GET /nacos/v1/core/cluster/nodes`: Nacos's `RestResult` around the member list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestResult<T> {
    /// 200.
    pub code: u16,
    pub message: Option<String>,
    pub data: T,
}

/// One member in `cluster/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub ip: String,
    pub port: u16,
    /// "UP" for a live member, "DOWN" for one that does not answer.
    pub state: String,
    /// `ip:port`.
    pub address: String,
    pub extend_info: BTreeMap<String, serde_json::Value>,
    pub fail_access_cnt: u32,
}

/// The v2 API's envelope: `{"code":0,"message":"success","data":…}` on success, and on an error
/// the HTTP status, a [`V2Code`] and its text, and the detail in `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V2Result<T> {
    pub code: u32,
    pub message: String,
    pub data: T,
}

impl<T> V2Result<T> {
    pub fn success(data: T) -> V2Result<T> {
        V2Result {
            code: V2Code::Success.code(),
            message: V2Code::Success.message().to_string(),
            data,
        }
    }
}

impl V2Result<String> {
    /// An error answer: the code's own text as `message`, the detail as `data`.
    pub fn failure(code: V2Code, detail: impl Into<String>) -> V2Result<String> {
        V2Result {
            code: code.code(),
            message: code.message().to_string(),
            data: detail.into(),
        }
    }
}

/// The codes of the v2 envelope that the naming API uses (Nacos's `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Code {
    Success,
    ParameterMissing,
    AccessDenied,
    ParameterValidateError,
    ResourceNotFound,
    ServiceNameError,
    WeightError,
    InstanceMetadataError,
    InstanceNotFound,
    InstanceError,
    ServerError,
}

impl V2Code {
    pub fn code(self) -> u32 {
        match self {
            V2Code::Success => 0,
            V2Code::ParameterMissing => 10000,
            V2Code::AccessDenied => 10001,
            V2Code::ParameterValidateError => 20002,
            V2Code::ResourceNotFound => 20004,
            V2Code::ServiceNameError => 21000,
            V2Code::WeightError => 21001,
            V2Code::InstanceMetadataError => 21002,
            V2Code::InstanceNotFound => 21003,
            V2Code::InstanceError => 21004,
            V2Code::ServerError => 30000,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            V2Code::Success => "success",
            V2Code::ParameterMissing => "parameter missing",
            V2Code::AccessDenied => "access denied",
            V2Code::ParameterValidateError => "parameter validate error",
            V2Code::ResourceNotFound => "resource not found",
            V2Code::ServiceNameError => "service name error",
            V2Code::WeightError => "weight error",
            V2Code::InstanceMetadataError => "instance metadata error",
            V2Code::InstanceNotFound => "instance not found",
            V2Code::InstanceError => "instance error",
            V2Code::ServerError => "server error",
        }
    }
}

/// `POST /nacos/v1/auth/login` (Rust client) and `/nacos/v1/auth/users/login` (Python client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginAnswer {
    pub access_token: String,
    /// Seconds.
    pub token_ttl: u64,
    pub global_admin: bool,
    pub username: String,
}

/// What a v1 register, update and deregister answer (plain text; the Python client compares the
/// bytes).
pub const V1_OK: &str = "ok";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn host(port: u16) -> Host {
        Host {
            instance_id: format!("127.0.0.1#{port}#DEFAULT#DEFAULT_GROUP@@orders"),
            ip: "127.0.0.1".into(),
            port,
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster_name: "DEFAULT".into(),
            service_name: "DEFAULT_GROUP@@orders".into(),
            metadata: BTreeMap::from([("client".into(), "node".into())]),
            instance_heart_beat_interval: 5000,
            instance_heart_beat_timeout: 15000,
            ip_delete_timeout: 30000,
            instance_id_generator: "simple".into(),
        }
    }

    fn info(hosts: Vec<Host>) -> ServiceInfo {
        ServiceInfo {
            name: "DEFAULT_GROUP@@orders".into(),
            group_name: "DEFAULT_GROUP".into(),
            clusters: "".into(),
            cache_millis: 3000,
            hosts,
            last_ref_time: 1_700_000_000_123,
            checksum: "".into(),
            all_ips: false,
            reach_protection_threshold: false,
            valid: true,
        }
    }

    #[test]
    fn instance_list_has_every_field_the_clients_read() {
        let v = serde_json::to_value(info(vec![host(8080)])).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "DEFAULT_GROUP@@orders", "groupName": "DEFAULT_GROUP", "clusters": "",
                "cacheMillis": 3000, "lastRefTime": 1_700_000_000_123u64, "checksum": "",
                "allIPs": false, "reachProtectionThreshold": false, "valid": true,
                "hosts": [{
                    "instanceId": "127.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders",
                    "ip": "127.0.0.1", "port": 8080, "weight": 1.0, "healthy": true,
                    "enabled": true, "ephemeral": true, "clusterName": "DEFAULT",
                    "serviceName": "DEFAULT_GROUP@@orders", "metadata": {"client": "node"},
                    "instanceHeartBeatInterval": 5000, "instanceHeartBeatTimeOut": 15000,
                    "ipDeleteTimeout": 30000, "instanceIdGenerator": "simple"
                }]
            })
        );
    }

    /// The Rust client's ServiceInfo and ServiceInstance (nacos-sdk 0.8.3), field for field:
    /// everything not `Option` there must be present and not null here.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct RustClientServiceInfo {
        name: String,
        group_name: String,
        clusters: String,
        cache_millis: i64,
        last_ref_time: i64,
        checksum: String,
        #[serde(rename = "allIPs")]
        all_ips: Option<bool>,
        reach_protection_threshold: bool,
        hosts: Option<Vec<RustClientInstance>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct RustClientInstance {
        instance_id: Option<String>,
        ip: String,
        port: i32,
        weight: f64,
        healthy: bool,
        enabled: bool,
        ephemeral: bool,
        cluster_name: Option<String>,
        service_name: Option<String>,
        metadata: std::collections::HashMap<String, String>,
    }

    #[test]
    fn the_rust_client_reads_our_service_info() {
        let text = serde_json::to_string(&info(vec![host(1), host(2)])).unwrap();
        let parsed: RustClientServiceInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.hosts.unwrap().len(), 2);
        // An empty service is an empty list, never null (the Python client refuses null).
        let v = serde_json::to_value(info(vec![])).unwrap();
        assert_eq!(v["hosts"], json!([]));
    }

    #[test]
    fn the_beat_answer_is_nacos_shaped() {
        let a = BeatAnswer {
            client_beat_interval: 5000,
            code: BEAT_OK,
            light_beat_enabled: true,
        };
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            json!({"clientBeatInterval": 5000, "code": 10200, "lightBeatEnabled": true})
        );
    }

    #[test]
    fn metrics_carry_only_the_status_unless_asked() {
        let m = Metrics {
            status: "UP".into(),
            service_count: None,
            instance_count: None,
            subscribe_count: None,
            client_count: None,
            connection_based_client_count: None,
            ephemeral_ip_port_client_count: None,
            responsible_client_count: None,
        };
        assert_eq!(serde_json::to_value(&m).unwrap(), json!({"status": "UP"}));
        let full = Metrics {
            service_count: Some(2),
            instance_count: Some(5),
            ..m
        };
        let v = serde_json::to_value(&full).unwrap();
        assert_eq!(
            (v["serviceCount"].clone(), v["instanceCount"].clone()),
            (json!(2), json!(5))
        );
    }

    #[test]
    fn the_v2_envelope() {
        assert_eq!(
            serde_json::to_value(V2Result::success("ok")).unwrap(),
            json!({"code": 0, "message": "success", "data": "ok"})
        );
        assert_eq!(
            serde_json::to_value(V2Result::failure(
                V2Code::ParameterMissing,
                "Param 'ip' is required."
            ))
            .unwrap(),
            json!({"code": 10000, "message": "parameter missing", "data": "Param 'ip' is required."})
        );
        let list = V2Result::success(info(vec![]));
        let v: Value = serde_json::to_value(list).unwrap();
        assert_eq!(v["data"]["groupName"], "DEFAULT_GROUP");
    }

    #[test]
    fn service_list_and_cluster_nodes() {
        assert_eq!(
            serde_json::to_value(ServiceList {
                count: 3,
                doms: vec!["a".into()]
            })
            .unwrap(),
            json!({"count": 3, "doms": ["a"]})
        );
        let nodes = RestResult {
            code: 200,
            message: None,
            data: vec![Member {
                ip: "127.0.0.1".into(),
                port: 8848,
                state: "UP".into(),
                address: "127.0.0.1:8848".into(),
                extend_info: BTreeMap::new(),
                fail_access_cnt: 0,
            }],
        };
        assert_eq!(
            serde_json::to_value(nodes).unwrap(),
            json!({"code": 200, "message": null, "data": [{"ip": "127.0.0.1", "port": 8848,
                "state": "UP", "address": "127.0.0.1:8848", "extendInfo": {}, "failAccessCnt": 0}]})
        );
    }
}
